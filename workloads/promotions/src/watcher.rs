//! The watched directory (`--promotions-dir`), in each command instance: a
//! task that checks the directory every `--promotions-dir-interval` and
//! loads each complete file through the same path as `POST
//! /promotions/files` (the command's in-process `CommandApp::handle`, the
//! body streamed from the file in chunks, never held whole).
//!
//! Several instances may watch one directory. A file is claimed by locking
//! it (an exclusive `flock`, held while it loads) and renaming it into
//! `.loading/`; a file in `.loading/` whose lock is free was claimed by an
//! instance that died, and is taken again (a new generation: the janitor
//! fails the one the dead instance left open). Names and outcomes are
//! [`crate::watch`].
//!
//! When the command stops mid-file, the body ends in an error (the upload is
//! aborted, nothing of it is loaded) and the file stays in `.loading/`,
//! unlocked once the process is gone, for the next instance.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::command::CommandApp;
use bytes::{Bytes, BytesMut};
use common::engine::shutdown::CancellationToken;
use common::engine::task::Task;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use tokio::io::AsyncReadExt;

use crate::metrics as m;
use crate::watch::{self, Outcome, DONE, ERROR_SUFFIX, FAILED, LOADING};

/// Bytes read from a file at a time: one chunk of the streamed body.
const CHUNK_BYTES: usize = 64 * 1024;

/// A file this instance claimed: locked while the handle lives.
#[derive(Debug)]
pub struct Claimed {
    /// Holds the lock.
    file: File,
    /// Its name as dropped.
    pub name: String,
    /// Where it is now: `<dir>/.loading/<name>`.
    pub path: PathBuf,
    /// Taken again from a dead instance.
    pub orphan: bool,
}

/// The task: checks `dir` every `interval` until stopped.
pub fn task(dir: PathBuf, interval: Duration, app: CommandApp) -> Task {
    Task::new("promotions-dir", move |stop| watch_dir(dir, interval, app, stop))
}

async fn watch_dir(dir: PathBuf, interval: Duration, app: CommandApp, stop: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(dir = %dir.display(), ?interval, "watching for promotions files");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // A directory that is missing or unreadable now may be fine at the next check.
        if let Err(e) = check(&dir, &app, &stop).await {
            tracing::warn!(dir = %dir.display(), error = %e, "checking the promotions directory");
        }
    }
}

/// Loads every file there is, one at a time, orphans first; stops early on a
/// file to retry (the next check takes it again) or when the command stops.
async fn check(dir: &Path, app: &CommandApp, stop: &CancellationToken) -> std::io::Result<()> {
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let d = dir.to_path_buf();
        let claimed = tokio::task::spawn_blocking(move || claim_next(&d))
            .await
            .map_err(|e| std::io::Error::other(format!("claiming panicked: {e}")))??;
        let Some(claimed) = claimed else { return Ok(()) };
        if !load(dir, claimed, app, stop).await? {
            return Ok(());
        }
    }
}

/// Claims the next file: an orphan of `.loading/` first, else a new file, by name.
///
/// # Errors
/// The directory cannot be read or its folders made.
pub fn claim_next(dir: &Path) -> std::io::Result<Option<Claimed>> {
    for sub in [LOADING, DONE, FAILED] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for name in candidates(&dir.join(LOADING))? {
        if let Some(c) = claim_orphan(dir, &name)? {
            return Ok(Some(c));
        }
    }
    for name in candidates(dir)? {
        if let Some(c) = claim_new(dir, &name)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The names of the files to take in `dir`, sorted.
fn candidates(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // file_type does not follow a symbolic link: only regular files are taken.
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if watch::is_candidate(&entry.file_name(), is_file) {
            names.extend(entry.file_name().to_str().map(str::to_owned));
        }
    }
    names.sort();
    Ok(names)
}

/// Opens `path` and takes its exclusive lock, if it is free and `path`
/// still names the file locked (it was not moved away meanwhile).
fn lock(path: &Path) -> std::io::Result<Option<File>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    let held = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() && now.is_file() => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file of `.loading/` whose lock is free: its instance died.
fn claim_orphan(dir: &Path, name: &str) -> std::io::Result<Option<Claimed>> {
    let path = dir.join(LOADING).join(name);
    Ok(lock(&path)?.map(|file| Claimed { file, name: name.to_owned(), path, orphan: true }))
}

/// A new file of `dir`: locked, then renamed into `.loading/` (the lock goes with it).
fn claim_new(dir: &Path, name: &str) -> std::io::Result<Option<Claimed>> {
    let from = dir.join(name);
    let to = dir.join(LOADING).join(name);
    // A file of that name is loading: this one waits for it (a rename would replace it).
    if std::fs::symlink_metadata(&to).is_ok() {
        return Ok(None);
    }
    let Some(file) = lock(&from)? else { return Ok(None) };
    match std::fs::rename(&from, &to) {
        Ok(()) => Ok(Some(Claimed { file, name: name.to_owned(), path: to, orphan: false })),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Streams one claimed file into the upload and moves it by the answer.
/// False when the check should stop (a file to retry later, or the command stopping).
async fn load(dir: &Path, claimed: Claimed, app: &CommandApp, stop: &CancellationToken) -> std::io::Result<bool> {
    let name = claimed.name.clone();
    tracing::info!(file = name, orphan = claimed.orphan, "loading a promotions file");
    let reader = tokio::fs::File::from_std(claimed.file.try_clone()?);
    let read_error: Arc<Mutex<Option<String>>> = Arc::default();
    let body = http_body_util::StreamBody::new(chunks(reader, stop.clone(), read_error.clone()));
    let mut req = hyper::Request::post(crate::command::ROUTE)
        .header(CONTENT_TYPE, HeaderValue::from_static("text/csv"))
        .body(body)
        .expect("a static route and header make a valid request");
    app.authorize_in_process(req.headers_mut());
    let answer = app.handle(req).await;
    let status = answer.status().as_u16();
    let text = {
        use http_body_util::BodyExt;
        let bytes = answer.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    if stop.is_cancelled() {
        metrics::counter!(m::DIR_FILES, "outcome" => "stopped").increment(1);
        tracing::info!(file = name, "the command is stopping: the file is left in .loading/ for the next instance");
        return Ok(false);
    }
    let unread = read_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let outcome = match (watch::outcome(status, &text), unread) {
        (Outcome::Done(g), _) => Outcome::Done(g),
        // The file could not be read: say why, rather than "the request body could not be read".
        (_, Some(e)) => Outcome::Retry(format!("reading the file: {e}")),
        (other, None) => other,
    };
    let at_ms = chrono::Utc::now().timestamp_millis();
    let finish = move || -> std::io::Result<bool> {
        match outcome {
            Outcome::Done(generation) => {
                std::fs::rename(&claimed.path, dir.join(DONE).join(watch::done_name(&name, generation)))?;
                metrics::counter!(m::DIR_FILES, "outcome" => "done").increment(1);
                tracing::info!(
                    file = name,
                    generation,
                    "promotions file loaded (its generation activates once every partition has it)"
                );
                Ok(true)
            }
            Outcome::Failed(reason) => {
                let failed = dir.join(FAILED).join(watch::failed_name(&name, at_ms));
                let mut error = failed.clone().into_os_string();
                error.push(ERROR_SUFFIX);
                // The reason first: whoever sees the failed file finds it.
                std::fs::write(&error, format!("{reason}\n"))?;
                std::fs::rename(&claimed.path, &failed)?;
                metrics::counter!(m::DIR_FILES, "outcome" => "failed").increment(1);
                tracing::warn!(file = name, reason, "promotions file refused; moved to failed/");
                Ok(true)
            }
            Outcome::Retry(reason) => {
                metrics::counter!(m::DIR_FILES, "outcome" => "retry").increment(1);
                tracing::warn!(file = name, reason, "promotions file not loaded; taken again at the next check");
                Ok(false)
            }
        }
    };
    // Moved while still locked: no other instance takes it meanwhile.
    let result = finish();
    drop(claimed.file);
    result
}

/// The file as a body: chunks of at most [`CHUNK_BYTES`], then its end; an
/// error (which aborts the upload) if it cannot be read or the command stops.
fn chunks(
    file: tokio::fs::File,
    stop: CancellationToken,
    read_error: Arc<Mutex<Option<String>>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send {
    futures::stream::unfold(Some(file), move |file| {
        let (stop, read_error) = (stop.clone(), read_error.clone());
        async move {
            let mut file = file?;
            let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
            // Stopping first: a file read to its end while the command stops would still load whole,
            // but a stopping command starts no more of it.
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => Err(std::io::Error::other("the command is stopping")),
                read = file.read_buf(&mut buf) => read,
            };
            match read {
                Ok(0) => None,
                Ok(_) => Some((Ok(Frame::data(buf.freeze())), Some(file))),
                Err(e) => {
                    if !stop.is_cancelled() {
                        *read_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                    }
                    Some((Err(e), None))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("promotions-{tag}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_complete_file_is_claimed_once_and_hidden_or_other_entries_never() {
        let dir = Dir::new("claim");
        std::fs::write(dir.0.join(".being-written.csv"), "x").unwrap();
        std::fs::create_dir(dir.0.join("sub")).unwrap();
        assert!(claim_next(&dir.0).unwrap().is_none(), "nothing complete yet");
        std::fs::write(dir.0.join("a.csv"), "x").unwrap();
        let claimed = claim_next(&dir.0).unwrap().expect("a.csv");
        assert_eq!((claimed.name.as_str(), claimed.orphan), ("a.csv", false));
        assert_eq!(claimed.path, dir.0.join(LOADING).join("a.csv"));
        assert!(!dir.0.join("a.csv").exists(), "moved into .loading/");
        assert!(claim_next(&dir.0).unwrap().is_none(), "locked: another instance does not take it");
        drop(claimed);
        let again = claim_next(&dir.0).unwrap().expect("its instance died: taken again");
        assert!(again.orphan);
    }

    #[test]
    fn a_file_waits_while_one_of_its_name_is_loading() {
        let dir = Dir::new("same-name");
        std::fs::write(dir.0.join("p.csv"), "first").unwrap();
        let first = claim_next(&dir.0).unwrap().expect("the first");
        std::fs::write(dir.0.join("p.csv"), "second").unwrap();
        assert!(claim_next(&dir.0).unwrap().is_none(), "it would replace the first");
        assert_eq!(std::fs::read_to_string(&first.path).unwrap(), "first");
        drop(first);
    }

    #[tokio::test]
    async fn a_body_read_from_a_file_ends_or_breaks_when_the_command_stops() {
        use futures::StreamExt;
        let dir = Dir::new("chunks");
        let path = dir.0.join("big.csv");
        std::fs::write(&path, vec![b'x'; CHUNK_BYTES * 2 + 5]).unwrap();
        let open = || async { tokio::fs::File::open(&path).await.unwrap() };
        let sizes: Vec<usize> = chunks(open().await, CancellationToken::new(), Arc::default())
            .map(|c| c.unwrap().into_data().unwrap().len())
            .collect()
            .await;
        assert_eq!(sizes.iter().sum::<usize>(), CHUNK_BYTES * 2 + 5);
        assert!(sizes.iter().all(|n| *n <= CHUNK_BYTES));

        let stop = CancellationToken::new();
        stop.cancel();
        let errors = Arc::default();
        let read: Vec<_> = chunks(open().await, stop, Arc::clone(&errors)).collect().await;
        assert!(matches!(read.as_slice(), [Err(_)]), "a stopped command ends the body in an error, never its end");
        assert!(errors.lock().unwrap().is_none(), "not the file's fault");
    }
}
