//! `[server] watch_config = true`: the configuration file is reloaded when it changes.
//!
//! The watcher (`notify`: inotify on Linux) watches the file's *directory*, not the file:
//! editors save by writing a new file and renaming it over the old one, and Kubernetes
//! swaps a ConfigMap's files by replacing a symlink beside them; a watch on the file itself
//! would be lost at the first save. Any change in the directory wakes the task, which
//! waits until the directory has been quiet for [`SETTLE`] (an editor's save is several
//! steps), then reads the file and reloads only if its bytes differ from the last ones
//! seen. So a save that changed nothing, or a change to a neighbour, costs one read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::gateway::Gateway;

/// How long the directory must be quiet before the file is read.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Watches `path` for as long as the returned watcher lives, reloading `gateway` on change.
pub fn watch(path: &Path, gateway: Arc<Gateway>) -> notify::Result<notify::RecommendedWatcher> {
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    // Capacity one: a wake-up already pending stands for any number of events.
    let (wake, mut woken) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = wake.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let initial = std::fs::read(&file).ok();
    tokio::spawn(async move {
        let mut seen = initial;
        while woken.recv().await.is_some() {
            // Wait for quiet: every further event restarts the wait.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, woken.recv()).await {}
            let now = tokio::fs::read(&file).await.ok();
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            // The outcome is logged and kept for /status by the reload itself.
            let _ = gateway.reload("config file changed").await;
        }
    });
    tracing::info!(file = %path.display(), "watching the configuration file for changes");
    Ok(watcher)
}
