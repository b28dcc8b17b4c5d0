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
//!
//! A watch follows an inode, not a name: after `mv w w.old; mkdir w` it
//! still watches `w.old`, and a path that does not exist yet cannot be
//! watched at all. So a second thread looks at every watched path once a
//! second (a `stat` each: device and inode, following links) and, when one
//! appeared, disappeared or now names another directory or link target,
//! re-arms the watches and reloads. Polling the few root paths is cheaper and
//! simpler than also watching every parent (which may be `/` or a busy
//! directory), works the same on every platform, and bounds the delay to
//! about a second.
//!
//! A reload is published only if the files held still: the walk that lists
//! them notes their sizes and modification times, and once a settle
//! interval has passed (the build runs meanwhile) the same files must be
//! listed and each file the build read must be as noted; otherwise the
//! reload starts again, so a file still being written is not loaded
//! half-written.
//!
//! The watching itself ([`watch_paths`]) knows nothing of policies: the TLS
//! certificate, key and client CA files are followed the same way
//! ([`crate::server::tls::watch`]).

use super::{rebuild, rebuild_if, ReloadOutcome, Sources};
use crate::policy::load::{
    policy_files, policy_files_and_folders, policy_files_with_metadata, Listed, Stamp, Walked,
};
use crate::server::State;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

/// How the watch behaves.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Quiet period after a change before reloading (a burst is one reload).
    pub quiet: Duration,
    /// Files must keep their size and modification time this long before
    /// they are loaded (zero: do not wait).
    pub settle: Duration,
    /// How often the watched paths are checked for being replaced, created
    /// or removed.
    pub poll: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            quiet: Duration::from_millis(50),
            settle: Duration::from_millis(DEFAULT_SETTLE_MS),
            poll: Duration::from_secs(1),
        }
    }
}

/// Default of `--reload-settle-ms`.
pub const DEFAULT_SETTLE_MS: u64 = 100;

/// A reload waits at most this long for files to stop changing, then loads
/// what is there (a broken set is refused as usual).
const MAX_SETTLE: Duration = Duration::from_secs(10);

type Debouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Watches until dropped.
pub struct FileWatcher {
    /// Dropping it ends the poll thread at once.
    _stop: mpsc::Sender<()>,
    _debouncer: Arc<Mutex<Debouncer>>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").finish_non_exhaustive()
    }
}

/// The directories to watch for `paths`, and how. A path that is not a
/// directory (a file, or nothing yet) is watched through its parent, when
/// that exists.
fn watch_targets(paths: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    let mut out: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for p in paths {
        let target = if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            (parent(p), RecursiveMode::NonRecursive)
        };
        if !target.0.is_dir() {
            continue;
        }
        match out.iter_mut().find(|(d, _)| *d == target.0) {
            Some(existing) if target.1 == RecursiveMode::Recursive => existing.1 = target.1,
            Some(_) => {}
            None => out.push(target),
        }
    }
    out
}

fn parent(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// What a path names now: device and inode of what it resolves to
/// (following links); `None` when it does not exist.
type Identity = Option<(u64, u64)>;

#[cfg(unix)]
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    let t = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    (u64::from(m.is_dir()), t)
}

/// The directories that anchor the watches (each root that is a directory,
/// else its parent) with their identities, and an open handle on each: while
/// a handle is held, the directory's inode cannot be freed, so a directory
/// removed and created again between two looks cannot come back with the
/// same inode number and go unnoticed.
fn anchors(paths: &[PathBuf]) -> (Vec<(PathBuf, Identity)>, Vec<std::fs::File>) {
    let mut out = Vec::new();
    let mut held = Vec::new();
    for p in paths {
        let dir = if p.is_dir() { p.clone() } else { parent(p) };
        let id = std::fs::File::open(&dir).ok().and_then(|f| {
            let id = f.metadata().ok().map(|m| identity(&m));
            held.push(f);
            id
        });
        out.push((dir, id));
    }
    (out, held)
}

/// Replaces the watches with those `paths` need now.
fn arm(debouncer: &Mutex<Debouncer>, armed: &mut Vec<PathBuf>, paths: &[PathBuf], what: &str) {
    let mut d = debouncer.lock().unwrap_or_else(|e| e.into_inner());
    for dir in armed.drain(..) {
        // Fails when the watch went with its directory; nothing to undo then.
        let _ = d.unwatch(&dir);
    }
    for (dir, mode) in watch_targets(paths) {
        match d.watch(&dir, mode) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "watching {what}");
                armed.push(dir);
            }
            // Gone again meanwhile, or unreadable: the next poll retries.
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch {what}"),
        }
    }
}

/// Starts watching `paths`; changes are applied to `state` after `quiet`
/// without further events.
pub fn watch(
    state: Arc<State>,
    sources: Arc<Sources>,
    quiet: Duration,
) -> Result<FileWatcher, WatchError> {
    watch_with(
        state,
        sources,
        WatchOptions {
            quiet,
            ..Default::default()
        },
    )
}

pub fn watch_with(
    state: Arc<State>,
    sources: Arc<Sources>,
    options: WatchOptions,
) -> Result<FileWatcher, WatchError> {
    let reload_sources = sources.clone();
    let watcher = watch_paths(
        sources.paths.clone(),
        options,
        if sources.shadow {
            WatchNames {
                what: "shadow policies",
                thread: "celgate-shadow-reload",
            }
        } else {
            WatchNames {
                what: "policies",
                thread: "celgate-reload",
            }
        },
        move || {
            settled_rebuild(&state, &reload_sources, options.settle);
        },
    )?;
    for p in sources.paths.iter().filter(|p| !p.exists()) {
        tracing::warn!(path = %p.display(), set = sources.label(), "policy path does not exist yet; it is loaded when it appears");
    }
    Ok(watcher)
}

/// How a watch names itself in logs and thread names.
#[derive(Debug, Clone, Copy)]
pub struct WatchNames {
    /// What is watched, for logs ("policies", "TLS files").
    pub what: &'static str,
    /// The name of the thread that runs `on_change` (the poll thread's is
    /// this with `-poll`).
    pub thread: &'static str,
}

/// Watches `paths` (files or directories) as described in the module
/// documentation and calls `on_change` on its own thread after each burst
/// of changes (`options.quiet`), and whenever a path or its directory was
/// replaced, created or removed. Calls never overlap; a panic in
/// `on_change` is logged and watching goes on. `options.settle` is left to
/// `on_change`. Watches until the [`FileWatcher`] is dropped.
pub fn watch_paths(
    paths: Vec<PathBuf>,
    options: WatchOptions,
    names: WatchNames,
    mut on_change: impl FnMut() + Send + 'static,
) -> Result<FileWatcher, WatchError> {
    let what = names.what;
    let (tx, rx) = mpsc::channel::<()>();
    let events = tx.clone();
    let debouncer = new_debouncer(
        options.quiet,
        None,
        move |res: DebounceEventResult| match res {
            Ok(evs) => {
                // Reading the files during a reload must not schedule another.
                if evs
                    .iter()
                    .any(|e| !matches!(e.event.kind, EventKind::Access(_)))
                {
                    let _ = events.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "file watch error");
                }
                // Events may have been lost: reload to be sure.
                let _ = events.send(());
            }
        },
    )
    .map_err(WatchError::Start)?;
    let debouncer = Arc::new(Mutex::new(debouncer));
    // Looked at before the watches are set, so a change from here on is
    // either seen by a watch or by the poll.
    let (mut seen, mut held) = anchors(&paths);
    let mut armed = Vec::new();
    {
        // At start every existing path must be watchable.
        let mut d = debouncer.lock().unwrap_or_else(|e| e.into_inner());
        for (dir, mode) in watch_targets(&paths) {
            d.watch(&dir, mode).map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
            tracing::info!(dir = %dir.display(), "watching {what}");
            armed.push(dir);
        }
    }

    std::thread::Builder::new()
        .name(names.thread.into())
        .spawn(move || {
            // Ends when every sender is gone (the debouncer and the poll
            // thread, both ended by dropping the FileWatcher).
            while rx.recv().is_ok() {
                // Coalesce whatever else arrived meanwhile into this reload.
                while rx.try_recv().is_ok() {}
                // Keeps the thread alive through a panic of the reload.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut on_change));
                if r.is_err() {
                    tracing::error!("reload of {what} panicked; reloading continues");
                }
                // Events caused by what was just read are not news.
                while rx.try_recv().is_ok() {}
            }
        })
        .map_err(WatchError::Thread)?;

    let (stop, stopped) = mpsc::channel::<()>();
    let poll_debouncer = debouncer.clone();
    std::thread::Builder::new()
        .name(format!("{}-poll", names.thread))
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(options.poll) {
                let (now, now_held) = anchors(&paths);
                // The old handles go only after the new look.
                drop(std::mem::replace(&mut held, now_held));
                if now == seen {
                    continue;
                }
                tracing::info!(
                    "a watched path ({what}) was replaced, created or removed; watching it again"
                );
                seen = now;
                arm(&poll_debouncer, &mut armed, &paths, what);
                // Whatever happened before the new watches were in place.
                if tx.send(()).is_err() {
                    break;
                }
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(FileWatcher {
        _stop: stop,
        _debouncer: debouncer,
    })
}

/// Rebuilds once the files it reads keep their sizes and modification
/// times for `settle`. The build runs inside that interval: the files are
/// listed (their stamps noted), read and compiled, and the result is
/// published (or its failure reported) only if, once `settle` has passed,
/// the same files are there and each file the build read is still as noted;
/// otherwise it starts again. A file the build did not read (unchanged
/// since the last reload, its policies taken over as compiled) cannot be
/// caught half-written; if it changes meanwhile, its change is the next
/// reload. So waiting costs at most `settle` beyond the build, and what is
/// published was read from files that held still throughout. After
/// [`MAX_SETTLE`] of constant change the files are loaded as they are.
fn settled_rebuild(state: &State, sources: &Sources, settle: Duration) -> ReloadOutcome {
    let started = Instant::now();
    loop {
        if settle.is_zero() || started.elapsed() >= MAX_SETTLE {
            if !settle.is_zero() {
                tracing::warn!(
                    waited_s = started.elapsed().as_secs(),
                    "policy files are still changing; loading them as they are"
                );
            }
            return rebuild(state, sources);
        }
        let noted_at = Instant::now();
        // The build reads the files this walk lists: one walk serves both.
        let (walked, noted) = Noted::list(&sources.paths);
        let outcome = rebuild_if(state, sources, Some((walked, noted.at)), |read| {
            if let Some(left) = settle.checked_sub(noted_at.elapsed()) {
                std::thread::sleep(left);
            }
            held_still(&sources.paths, &noted, read)
        });
        if outcome != ReloadOutcome::Superseded {
            return outcome;
        }
        tracing::debug!("policy files changed while being read; reading them again");
    }
}

/// The files a walk listed, or why it could not.
fn names(walked: &Walked) -> Result<Vec<PathBuf>, String> {
    match walked {
        Ok(files) => Ok(files.iter().map(|(f, _)| f.clone()).collect()),
        Err(e) => Err(e.to_string()),
    }
}

/// What the listing before a build saw.
struct Noted {
    /// The policy files, or why they could not be listed.
    files: Result<Vec<PathBuf>, String>,
    /// Each folder walked, with its stamp from before it was read.
    folders: Listed,
    /// When the listing started.
    at: SystemTime,
}

impl Noted {
    /// Lists the policy files under `paths`: what a build reads, and what
    /// the settle check compares with afterwards.
    fn list(paths: &[PathBuf]) -> (Walked, Noted) {
        let at = SystemTime::now();
        let (walked, folders) = match policy_files_and_folders(paths) {
            Ok((files, folders)) => (Ok(files), folders),
            Err(e) => (Err(e), Vec::new()),
        };
        let files = names(&walked);
        (walked, Noted { files, folders, at })
    }
}

/// Whether `path` still has the stamp `noted`.
fn as_noted(path: &Path, noted: &std::fs::Metadata) -> bool {
    std::fs::metadata(path).is_ok_and(|m| Stamp::of(&m) == Stamp::of(noted))
}

/// Whether the paths still hold the files `noted`, and each file of `read`
/// still has the metadata noted with it.
fn held_still(paths: &[PathBuf], noted: &Noted, read: &[(PathBuf, std::fs::Metadata)]) -> bool {
    let same_files = match &noted.files {
        // No entry was added, removed or renamed in a folder that keeps a
        // stamp from well before the listing.
        Ok(_) if folders_held_still(&noted.folders, noted.at) => true,
        // Listing names needs no look at each file.
        Ok(_) => policy_files(paths).map_err(|e| e.to_string()) == noted.files,
        Err(_) => names(&policy_files_with_metadata(paths)) == noted.files,
    };
    same_files && read.iter().all(|(f, seen)| as_noted(f, seen))
}

/// Whether no folder had an entry added, removed or renamed: each kept a
/// stamp from well before the listing ([`crate::policy::load::RACY`]).
fn folders_held_still(folders: &Listed, listed_at: SystemTime) -> bool {
    folders
        .iter()
        .all(|(dir, noted)| Stamp::of(noted).settled_by(listed_at) && as_noted(dir, noted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(paths: &[PathBuf]) -> Noted {
        let (walked, noted) = Noted::list(paths);
        walked.unwrap();
        noted
    }

    /// Gives `dir` a modification time an hour old.
    fn backdate(dir: &Path) {
        let f = std::fs::File::open(dir).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }

    #[test]
    fn a_folder_that_kept_an_old_stamp_is_not_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.yaml"), "a: 1\n").unwrap();
        let paths = vec![root.to_path_buf()];
        // Just modified: its entries may change within the stamp's
        // granularity, so they are listed again.
        let noted = note(&paths);
        assert!(!folders_held_still(&noted.folders, noted.at));
        assert!(held_still(&paths, &noted, &[]));
        backdate(root);
        let noted = note(&paths);
        assert!(folders_held_still(&noted.folders, noted.at));
        // A file changed in place does not change its folder.
        std::fs::write(root.join("a.yaml"), "a: 22\n").unwrap();
        assert!(folders_held_still(&noted.folders, noted.at));
        assert!(held_still(&paths, &noted, &[]));
        // A new entry does.
        std::fs::write(root.join("b.yaml"), "b: 1\n").unwrap();
        assert!(!folders_held_still(&noted.folders, noted.at));
        assert!(!held_still(&paths, &noted, &[]));
    }

    #[cfg(unix)]
    #[test]
    fn a_mount_whose_version_is_swapped_has_not_held_still() {
        // The layout of a Kubernetes ConfigMap volume.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for v in ["..v1", "..v2"] {
            std::fs::create_dir(root.join(v)).unwrap();
            std::fs::write(root.join(v).join("p.yaml"), format!("v: {v}\n")).unwrap();
        }
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/p.yaml", root.join("p.yaml")).unwrap();
        backdate(&root.join("..v1"));
        backdate(root);
        let paths = vec![root.to_path_buf()];
        let noted = note(&paths);
        assert!(folders_held_still(&noted.folders, noted.at));
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert!(!folders_held_still(&noted.folders, noted.at));
        assert!(!held_still(&paths, &noted, &[]));
    }

    #[test]
    fn the_settle_check_sees_new_files_and_changes_to_files_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| dir.path().join(n);
        std::fs::write(file("a.yaml"), "a: 1\n").unwrap();
        std::fs::write(file("b.yaml"), "b: 1\n").unwrap();
        let paths = vec![dir.path().to_path_buf()];
        let listed = note(&paths);
        let files = policy_files_with_metadata(&paths).unwrap();
        let read = |n: &str| {
            files
                .iter()
                .filter(|(f, _)| f.ends_with(n))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert!(held_still(&paths, &listed, &read("a.yaml")));
        // Not a policy file: not listed, not compared.
        std::fs::write(file("notes.txt"), "x").unwrap();
        assert!(held_still(&paths, &listed, &read("a.yaml")));
        // A file the build did not read changes: that is the next reload.
        std::fs::write(file("b.yaml"), "b: 22\n").unwrap();
        assert!(held_still(&paths, &listed, &read("a.yaml")));
        // A file it read changes.
        std::fs::write(file("a.yaml"), "a: 22\n").unwrap();
        assert!(!held_still(&paths, &listed, &read("a.yaml")));
        // A file it read is replaced by a rename (same size).
        let listed = note(&paths);
        let files = policy_files_with_metadata(&paths).unwrap();
        let noted: Vec<_> = files
            .iter()
            .filter(|(f, _)| f.ends_with("a.yaml"))
            .cloned()
            .collect();
        std::fs::write(file(".tmp"), "a: 33\n").unwrap();
        std::fs::rename(file(".tmp"), file("a.yaml")).unwrap();
        assert!(!held_still(&paths, &listed, &noted));
        // A policy file appears, or one goes.
        let listed = note(&paths);
        std::fs::write(file("c.yml"), "c: 1\n").unwrap();
        assert!(!held_still(&paths, &listed, &[]));
        let listed = note(&paths);
        std::fs::remove_file(file("b.yaml")).unwrap();
        assert!(!held_still(&paths, &listed, &[]));
    }

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
