//! `topo = "file"`: the topology store in a directory of the proxy's own disk.
//!
//! ```text
//! <dir>/vschema/current          the current version number
//! <dir>/vschema/v<N>.json        version N: author, source, time, diff, document
//! <dir>/pins/<keyspace>/<B>.pins the pins of workspaces with id % 1024 == B,
//!                                one `workspace shard` line each
//! <dir>/traffic/<cluster>.toml   a cluster's saved traffic state
//! ```
//!
//! Every file is replaced whole by write-to-temporary-then-rename, so a crash leaves
//! the old or the new content, never half of each. One pin change rewrites one bucket
//! (about a thousandth of the pins), not the directory. One proxy owns the directory;
//! leases are always granted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{BoxFut, Event, KeyspacePins, Lease, PinChange, Topo, TopoError, VersionRecord};

/// Pin buckets per keyspace.
pub const PIN_BUCKETS: u64 = 1024;

/// Versions kept; older ones are deleted as new ones come.
pub const KEPT_VERSIONS: u64 = 1000;

/// The store.
pub struct FileTopo {
    dir: PathBuf,
    /// Serializes writers of this process.
    write: Mutex<()>,
    /// Kept so that watchers' receivers stay open (nothing else writes the directory).
    _events: tokio::sync::mpsc::Sender<Event>,
    events_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Event>>>,
}

fn io(path: &Path, e: std::io::Error) -> TopoError {
    TopoError::Unavailable(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), TopoError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// (name, path) of each entry of directory `root`; none when it does not exist.
fn entries(root: &Path) -> Result<Vec<(String, PathBuf)>, TopoError> {
    let listing = match std::fs::read_dir(root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root, e)),
    };
    listing
        .map(|entry| {
            let entry = entry.map_err(|e| io(root, e))?;
            Ok((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ))
        })
        .collect()
}

fn read_optional(path: &Path) -> Result<Option<String>, TopoError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

impl FileTopo {
    /// The store in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> FileTopo {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        FileTopo {
            dir,
            write: Mutex::new(()),
            _events: tx,
            events_rx: Mutex::new(Some(rx)),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join("vschema").join("current")
    }

    fn version_path(&self, v: u64) -> PathBuf {
        self.dir.join("vschema").join(format!("v{v}.json"))
    }

    fn current_number(&self) -> Result<u64, TopoError> {
        let path = self.current_path();
        match read_optional(&path)? {
            None => Ok(0),
            Some(s) => s.trim().parse().map_err(|_| {
                TopoError::Corrupt(format!("{}: not a version number", path.display()))
            }),
        }
    }

    fn read_version(&self, v: u64) -> Result<Option<VersionRecord>, TopoError> {
        let path = self.version_path(v);
        match read_optional(&path)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| TopoError::Corrupt(format!("{}: {e}", path.display()))),
        }
    }

    fn publish_now(&self, record: &VersionRecord, expected: u64) -> Result<(), TopoError> {
        let _g = self.lock();
        let current = self.current_number()?;
        if current != expected {
            return Err(TopoError::Conflict { current });
        }
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| TopoError::Corrupt(e.to_string()))?;
        replace_file(&self.version_path(record.version), &json)?;
        replace_file(
            &self.current_path(),
            format!("{}\n", record.version).as_bytes(),
        )?;
        if record.version > KEPT_VERSIONS {
            let _ = std::fs::remove_file(self.version_path(record.version - KEPT_VERSIONS));
        }
        Ok(())
    }

    fn history_now(&self, limit: usize) -> Result<Vec<VersionRecord>, TopoError> {
        let current = self.current_number()?;
        let mut out = Vec::new();
        let mut v = current;
        while v > 0 && out.len() < limit {
            match self.read_version(v)? {
                Some(r) => out.push(r),
                None => break,
            }
            v -= 1;
        }
        Ok(out)
    }

    fn bucket_path(&self, keyspace: &str, bucket: u64) -> PathBuf {
        self.dir
            .join("pins")
            .join(super::escape_component(keyspace))
            .join(format!("{bucket}.pins"))
    }

    fn load_pins_now(&self) -> Result<Vec<KeyspacePins>, TopoError> {
        let root = self.dir.join("pins");
        let mut out = Vec::new();
        for (name, _) in entries(&root)? {
            let mut ks = KeyspacePins {
                keyspace: super::unescape_component(&name),
                ..KeyspacePins::default()
            };
            let mut shard_index: BTreeMap<String, u32> = BTreeMap::new();
            for b in 0..PIN_BUCKETS {
                let path = self.bucket_path(&ks.keyspace, b);
                let Some(text) = read_optional(&path)? else {
                    continue;
                };
                // Buckets hold about the same number of pins (ids modulo 1024): size the
                // list once from the first bucket instead of doubling it twenty times
                // (capped, should the ids be skewed).
                if b == 0 {
                    let lines = text.bytes().filter(|&c| c == b'\n').count();
                    ks.pins
                        .reserve((lines * PIN_BUCKETS as usize * 21 / 20).min(1 << 22));
                }
                for (n, line) in text.lines().enumerate() {
                    let Some((ws, shard)) = line.split_once(' ') else {
                        return Err(TopoError::Corrupt(format!(
                            "{} line {}: expected `workspace shard`",
                            path.display(),
                            n + 1
                        )));
                    };
                    let ws: u64 = ws.parse().map_err(|_| {
                        TopoError::Corrupt(format!(
                            "{} line {}: not a workspace id",
                            path.display(),
                            n + 1
                        ))
                    })?;
                    // Few shard names, a million lines: look up before allocating.
                    let index = match shard_index.get(shard) {
                        Some(&i) => i,
                        None => {
                            let next = ks.shards.len() as u32;
                            shard_index.insert(shard.to_string(), next);
                            ks.shards.push(shard.to_string());
                            next
                        }
                    };
                    ks.pins.push((ws, index));
                }
            }
            out.push(ks);
        }
        out.sort_by(|a, b| a.keyspace.cmp(&b.keyspace));
        Ok(out)
    }

    fn set_pin_now(&self, change: &PinChange) -> Result<(), TopoError> {
        let _g = self.lock();
        let path = self.bucket_path(&change.keyspace, change.workspace % PIN_BUCKETS);
        let text = read_optional(&path)?.unwrap_or_default();
        let mut pins: BTreeMap<u64, String> = BTreeMap::new();
        for line in text.lines() {
            if let Some((ws, shard)) = line.split_once(' ') {
                if let Ok(ws) = ws.parse::<u64>() {
                    pins.insert(ws, shard.to_string());
                }
            }
        }
        match &change.shard {
            Some(s) => {
                pins.insert(change.workspace, s.clone());
            }
            None => {
                pins.remove(&change.workspace);
            }
        }
        let mut out = String::with_capacity(text.len() + 32);
        for (ws, shard) in &pins {
            out.push_str(&format!("{ws} {shard}\n"));
        }
        replace_file(&path, out.as_bytes())
    }

    fn traffic_path(&self, cluster: &str) -> PathBuf {
        self.dir
            .join("traffic")
            .join(format!("{}.toml", super::escape_component(cluster)))
    }

    fn load_traffic_now(&self) -> Result<Vec<(String, String)>, TopoError> {
        let root = self.dir.join("traffic");
        let mut out = Vec::new();
        for (name, path) in entries(&root)? {
            let Some(stem) = name.strip_suffix(".toml") else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            out.push((super::unescape_component(stem), text));
        }
        out.sort();
        Ok(out)
    }
}

impl Topo for FileTopo {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn current(&self) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>> {
        Box::pin(async move {
            let v = self.current_number()?;
            if v == 0 {
                return Ok(None);
            }
            self.read_version(v)
        })
    }

    fn publish(&self, record: VersionRecord, expected: u64) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(async move { self.publish_now(&record, expected) })
    }

    fn history(&self, limit: usize) -> BoxFut<'_, Result<Vec<VersionRecord>, TopoError>> {
        Box::pin(async move { self.history_now(limit) })
    }

    fn version(&self, version: u64) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>> {
        Box::pin(async move { self.read_version(version) })
    }

    fn load_pins(&self) -> BoxFut<'_, Result<Vec<KeyspacePins>, TopoError>> {
        Box::pin(async move { self.load_pins_now() })
    }

    fn set_pin(&self, change: PinChange) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(async move { self.set_pin_now(&change) })
    }

    fn save_traffic(&self, cluster: String, state: String) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(async move {
            let _g = self.lock();
            replace_file(&self.traffic_path(&cluster), state.as_bytes())
        })
    }

    fn load_traffic(&self) -> BoxFut<'_, Result<Vec<(String, String)>, TopoError>> {
        Box::pin(async move { self.load_traffic_now() })
    }

    fn lease(
        &self,
        _name: String,
        _ttl: Duration,
    ) -> BoxFut<'_, Result<Option<Box<dyn Lease>>, TopoError>> {
        Box::pin(async move { Ok(Some(Box::new(super::LocalLease) as Box<dyn Lease>)) })
    }

    fn watch(&self) -> tokio::sync::mpsc::Receiver<Event> {
        // Nothing else writes the directory: the one receiver never gets an event, and
        // later callers get a closed one.
        self.events_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| tokio::sync::mpsc::channel(1).1)
    }

    fn reachable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: u64) -> VersionRecord {
        VersionRecord {
            version: v,
            author: "t".into(),
            source: "sql".into(),
            time_ms: 1,
            diff: vec![format!("change {v}")],
            document: format!("# {v}\n"),
        }
    }

    #[tokio::test]
    async fn versions_are_compared_and_swapped_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTopo::new(dir.path().join("topo"));
        assert_eq!(t.current().await.unwrap(), None);
        t.publish(record(1), 0).await.unwrap();
        t.publish(record(2), 1).await.unwrap();
        assert_eq!(
            t.publish(record(2), 1).await,
            Err(TopoError::Conflict { current: 2 })
        );
        assert_eq!(t.current().await.unwrap(), Some(record(2)));
        let h = t.history(10).await.unwrap();
        assert_eq!(h, vec![record(2), record(1)]);
        assert_eq!(t.version(1).await.unwrap(), Some(record(1)));
    }

    #[tokio::test]
    async fn one_pin_changes_one_bucket_and_all_pins_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = FileTopo::new(dir.path().join("topo"));
        for ws in [1u64, 1025, 7] {
            t.set_pin(PinChange {
                keyspace: "chat/x".into(),
                workspace: ws,
                shard: Some(if ws == 7 { "80-".into() } else { "-80".into() }),
            })
            .await
            .unwrap();
        }
        t.set_pin(PinChange {
            keyspace: "chat/x".into(),
            workspace: 1025,
            shard: None,
        })
        .await
        .unwrap();
        let all = t.load_pins().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].keyspace, "chat/x");
        let mut named: Vec<(u64, String)> = all[0]
            .pins
            .iter()
            .map(|(w, i)| (*w, all[0].shards[*i as usize].clone()))
            .collect();
        named.sort();
        assert_eq!(named, vec![(1, "-80".to_string()), (7, "80-".to_string())]);
    }
}
