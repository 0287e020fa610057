//! Start-up and the sources of changes that are not statements: the vschema file
//! (watched, and re-read on SIGHUP) and the topology store's watch (changes made by
//! other proxies of the fleet).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{adopt, change, ChangeRequest, STORE_DEADLINE};
use crate::config::TopoConfig;
use crate::shared::Shared;
use crate::topo::{Event, VersionRecord};

/// How often the file is looked at (its modification time and length) besides the
/// file system's notifications and SIGHUP: a fallback where notifications do not
/// arrive (some network file systems).
const FILE_POLL: Duration = Duration::from_secs(2);

/// How long the file's text must stay the same before it is imported: a writer that
/// truncates and then writes (a shell's `>`, most programs' plain write) leaves an
/// empty or partial file for a moment.
const SETTLE: Duration = Duration::from_millis(50);

/// How many times the file is read [`SETTLE`] apart before a text that keeps changing
/// is left for the next look.
const SETTLE_READS: usize = 20;

/// A watch on the directory of `path` (editors replace a file by renaming a new one
/// over it, so the file itself is not watched); each event of that file name wakes
/// `tx`. None where the platform or file system offers none.
fn notify_watch(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let name = path.file_name()?.to_os_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if is_change(&event.kind)
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()))
            {
                // A full channel already holds a wake-up.
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "no file notifications: the vschema file is polled"))
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, dir = %dir.display(), "no file notifications: the vschema file is polled"))
        .ok()?;
    Some(watcher)
}

/// Whether a file system event may have changed the file: not an access other than
/// a writer closing it. Reading the file (as this watch does on each wake-up) is one,
/// and woke the watch again, 20 times a second.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(a) => matches!(a, AccessKind::Close(AccessMode::Write)),
        _ => true,
    }
}

/// A fingerprint of a document's text.
fn fingerprint(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(text.as_bytes(), 0))
}

/// Where this proxy notes the fingerprint of the file text it last imported.
fn marker_path(config: &TopoConfig) -> Option<PathBuf> {
    match config {
        TopoConfig::Memory => None,
        TopoConfig::File { dir } | TopoConfig::Etcd { dir, .. } => {
            Some(dir.join("vschema-file-imported"))
        }
    }
}

fn read_marker(config: &TopoConfig) -> Option<String> {
    std::fs::read_to_string(marker_path(config)?)
        .ok()
        .map(|s| s.trim().to_string())
}

fn write_marker(config: &TopoConfig, text: &str) {
    if let Some(p) = marker_path(config) {
        if let Err(e) = crate::topo::file::replace_file(&p, fingerprint(text).as_bytes()) {
            tracing::warn!(error = %e, "could not note which vschema file text was imported");
        }
    }
}

/// How long a starting proxy tries to read the topology store before it gives up.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// Loads the current version from the store (or stores the config's document as
/// version 1) and the pin directory, imports the vschema file if it changed since this
/// proxy last imported it, and starts watching the file, SIGHUP and the store until
/// `stop`. Fails when the store cannot be read within `START_DEADLINE`, or holds a
/// version this proxy's config cannot serve: serving without them could route a
/// pinned or moved workspace to the wrong shard.
pub async fn start(shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> Result<(), String> {
    let config = &shared.config;
    let file_text = config.vschema_text.clone();
    let start_text = file_text
        .clone()
        .unwrap_or_else(|| config.vschema.to_document().to_text());
    // Watched before anything is read, so a change another proxy makes meanwhile is
    // not missed (it is applied after the load, or found already applied).
    let events = shared.plane.topo().watch();
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    let kind = shared.plane.topo().kind();
    let stored = loop {
        let e = match crate::timer::timeout(STORE_DEADLINE, shared.plane.topo().current()).await {
            Ok(Ok(stored)) => break stored,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "it did not answer in time".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the topology store ({kind}) could not be read at start: {e}"
            ));
        }
        tracing::warn!(error = %e, "topology store ({kind}) not readable yet; retrying");
        crate::timer::sleep(Duration::from_millis(500)).await;
    };
    shared.plane.set_reachable(true);
    match stored {
        Some(record) => {
            adopt(shared, record)?;
            // The file changed since this proxy last imported it. Without a note of
            // what it imported (a new proxy of the fleet, a lost directory) the store
            // wins: its file may be older than changes made over SQL or HTTP.
            if let Some(text) = &file_text {
                match read_marker(&config.topo) {
                    None => {
                        tracing::info!("no note of an earlier import of the vschema file: serving the topology store's version, not importing the file");
                        write_marker(&config.topo, text);
                    }
                    Some(m) if m != fingerprint(text) => {
                        import_file(shared, text.clone()).await;
                    }
                    Some(_) => {}
                }
            }
        }
        None => {
            let record = VersionRecord {
                version: 1,
                author: config.listen.to_string(),
                source: if file_text.is_some() { "file" } else { "start" }.to_string(),
                time_ms: crate::topo::now_ms(),
                diff: vec!["first version".to_string()],
                document: start_text,
            };
            let published = crate::timer::timeout(
                STORE_DEADLINE,
                shared.plane.topo().publish(record.clone(), 0),
            )
            .await;
            match published {
                Ok(Ok(())) => {
                    if let Some(t) = &file_text {
                        write_marker(&config.topo, t);
                    }
                    let vs = Arc::new(config.vschema.clone());
                    shared.plane.set_current(Arc::new(record), vs);
                }
                // Another proxy of the fleet stored one first: serve that.
                Ok(Err(crate::topo::TopoError::Conflict { .. })) => {
                    match crate::timer::timeout(STORE_DEADLINE, shared.plane.topo().current()).await
                    {
                        Ok(Ok(Some(r))) => adopt(shared, r)?,
                        _ => {
                            return Err(format!(
                                "the topology store ({kind}) could not be read at start"
                            ))
                        }
                    }
                }
                Ok(Err(e)) => {
                    return Err(format!(
                        "the topology store ({kind}) did not take the first vschema version: {e}"
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "the topology store ({kind}) did not answer at start"
                    ))
                }
            }
        }
    }
    super::pins::load_directory(shared)
        .await
        .map_err(|e| format!("the pin directory could not be loaded at start: {e}"))?;
    if let Some(path) = config.vschema_file.clone() {
        tokio::spawn(watch_file(shared.clone(), path, stop.clone()));
    }
    tokio::spawn(watch_store(shared.clone(), events, stop));
    Ok(())
}

/// Imports the file's `text` as a new version; a refusal is logged and the current
/// version keeps serving. Returns false when the store did not take it (a later look
/// at the file tries again), true when it is settled (applied, unchanged or refused).
async fn import_file(shared: &Shared, text: String) -> bool {
    let path = shared.config.vschema_file.as_deref().map_or_else(
        || "the vschema file".to_string(),
        |p| p.display().to_string(),
    );
    // A file cut short (a writer stopped between truncating and writing, a full disk)
    // must not be read as "drop every cluster".
    if crate::vschema::Document::parse(&text).is_ok_and(|d| d.0.clusters.is_empty()) {
        tracing::error!(
            "vschema file {path} refused, version {} keeps serving: it names no cluster (empty or cut short?); the shard map is never emptied from the file",
            shared.plane.version()
        );
        return true;
    }
    let r = change(
        shared,
        ChangeRequest {
            author: format!("file {path}"),
            source: "file",
            document: text.clone(),
            expected: None,
            allow_movement: false,
            note: None,
        },
    )
    .await;
    match r {
        Ok(a) if a.diff.is_empty() => {
            write_marker(&shared.config.topo, &text);
            true
        }
        Ok(a) => {
            write_marker(&shared.config.topo, &text);
            tracing::info!(
                version = a.version,
                "vschema file {path} applied ({} changes)",
                a.diff.len()
            );
            true
        }
        Err(e) => {
            tracing::error!(
                "vschema file {path} refused, version {} keeps serving: {e}",
                shared.plane.version()
            );
            !matches!(
                e,
                super::ChangeError::Store(_) | super::ChangeError::Stale { .. }
            )
        }
    }
}

/// The file's text once two reads [`SETTLE`] apart agree; None while it keeps
/// changing for [`SETTLE_READS`] reads.
async fn read_settled(path: &Path) -> std::io::Result<Option<String>> {
    let mut text = tokio::fs::read_to_string(path).await?;
    for _ in 0..SETTLE_READS {
        crate::timer::sleep(SETTLE).await;
        let again = tokio::fs::read_to_string(path).await?;
        if again == text {
            return Ok(Some(text));
        }
        text = again;
    }
    Ok(None)
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Re-reads the vschema file when it changes (a file system notification, or its
/// modification time or length looked at every [`FILE_POLL`]) or on SIGHUP.
async fn watch_file(shared: Arc<Shared>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let (tx, mut changed) = tokio::sync::mpsc::channel(1);
    let _watcher = notify_watch(&path, tx);
    // None: the first look reads the file, so an edit made between the config being
    // read and this watch starting is not missed.
    let mut stamp = None;
    let mut last_text = shared.config.vschema_text.clone();
    let mut tick = crate::timer::interval(FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // (forced: SIGHUP, polled: the timer rather than a notification)
        let (forced, polled) = tokio::select! {
            _ = tick.tick() => (false, true),
            Some(()) = changed.recv() => (false, false),
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => (true, false),
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        let now = file_stamp(&path);
        if polled && now == stamp {
            continue;
        }
        stamp = now;
        let text = match read_settled(&path).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                tracing::warn!(file = %path.display(), "the vschema file is still being written; looked at again shortly");
                stamp = None;
                continue;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the vschema file; the current version keeps serving");
                continue;
            }
        };
        if !forced && last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        if forced {
            tracing::info!(file = %path.display(), "SIGHUP: re-reading the vschema file");
        }
        if import_file(&shared, text.clone()).await {
            last_text = Some(text);
        } else {
            // Looked at again on the next tick.
            stamp = None;
        }
    }
}

/// Applies what the topology store reports: other proxies' versions and pins, and
/// traffic state; reloads everything when the store comes back after an outage.
async fn watch_store(
    shared: Arc<Shared>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.changed() => return,
        };
        let Some(event) = event else {
            // The store reports nothing more (file and memory stores: only this proxy
            // writes them).
            return;
        };
        match event {
            Event::Vschema(record) => {
                if record.version <= shared.plane.version() {
                    continue;
                }
                let _turn = shared.plane.changing.lock().await;
                if record.version <= shared.plane.version() {
                    continue;
                }
                if let Err(e) = adopt(&shared, record) {
                    tracing::error!("{e}; the current version keeps serving");
                }
            }
            Event::Pin(change) => {
                // Not while a new map is built: it carries the directory over.
                let _turn = shared.plane.changing.lock().await;
                super::pins::apply_pin_event(&shared, &change)
            }
            Event::Traffic { cluster, state } => {
                crate::traffic::apply_saved_traffic(&shared, &cluster, &state);
            }
            Event::Reachable(false) => {
                shared.plane.set_reachable(false);
                tracing::warn!(
                    version = shared.plane.version(),
                    "topology store unreachable: serving the last snapshot"
                );
            }
            Event::Reachable(true) => {
                shared.plane.set_reachable(true);
                tracing::info!("topology store reachable again: reloading");
                reload(&shared).await;
                if let Err(e) = crate::traffic::saved::load_saved(&shared).await {
                    tracing::error!(error = %e, "could not reload the fleet's traffic state");
                }
            }
        }
    }
}

/// Catches up with the store after an outage: its current version and its pins.
async fn reload(shared: &Shared) {
    super::catch_up(shared).await;
    let _turn = shared.plane.changing.lock().await;
    if let Err(e) = super::pins::load_directory(shared).await {
        tracing::error!(error = %e, "could not reload the pin directory");
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::EventKind;

    #[test]
    fn reading_the_file_is_not_a_change_writing_or_replacing_it_is() {
        assert!(!super::is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!super::is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(super::is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(super::is_change(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(super::is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(super::is_change(&EventKind::Create(CreateKind::File)));
        assert!(super::is_change(&EventKind::Remove(
            notify::event::RemoveKind::File
        )));
    }
}
