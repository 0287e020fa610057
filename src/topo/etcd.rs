//! `topo = "etcd"`: the topology store in an etcd cluster shared by a fleet of proxies
//! (etcd's v3 API through the `etcd-client` crate).
//!
//! ```text
//! <prefix>/vschema/current      the current version number
//! <prefix>/vschema/v/<N>        version N as JSON (N zero-padded to 20 digits, so keys
//!                               sort as numbers); the last 1000 are kept
//! <prefix>/pins/<keyspace>/<B>  the pins of workspaces with id % 1024 == B, one
//!                               `workspace shard` line each
//! <prefix>/traffic/<cluster>    a cluster's saved traffic state (the text of the
//!                               traffic state file's entry for it)
//! <prefix>/leases/<name>        the identity of the proxy holding lease `name`,
//!                               attached to an etcd lease that its holder renews
//! ```
//!
//! Keyspace, cluster and lease names are percent-escaped into one key component.
//!
//! - A publish is one etcd transaction that compares the current version key with the
//!   expected version, and writes the new version, the current key and drops the
//!   version 1000 back, or reads the current version for [`TopoError::Conflict`].
//! - A pin change rewrites one bucket (a thousandth of a keyspace's pins) with a
//!   compare on the bucket's modification revision, retried when another proxy
//!   changed the same bucket meanwhile; a million pins load as about 1024 values per
//!   keyspace, read in pages.
//! - A lease is an etcd lease with the store's TTL, renewed by a task; its key is put
//!   with "create if absent", so one proxy at a time holds it. Dropping it revokes it;
//!   a proxy that dies stops renewing and etcd frees it after the TTL.
//! - [`Topo::watch`] watches the whole prefix (see `watch.rs`), and re-establishes a
//!   watch that an outage broke, saying so with [`Event::Reachable`].
//!
//! The client connects lazily, so a proxy starts (and serves the vschema of its file)
//! while etcd is down. Every call has a deadline of [`CALL_DEADLINE`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use super::{BoxFut, Event, KeyspacePins, Lease, PinChange, Topo, TopoError, VersionRecord};

mod lease;
mod watch;

/// The longest any one etcd call may take before the store counts as unreachable.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);

/// Pin buckets per keyspace (as the file store).
pub const PIN_BUCKETS: u64 = super::file::PIN_BUCKETS;

/// Versions kept; older ones are deleted as new ones come.
pub const KEPT_VERSIONS: u64 = super::file::KEPT_VERSIONS;

/// How often an idle connection to etcd is pinged (a partition is noticed after this
/// plus [`CALL_DEADLINE`]; a stopped etcd at once, by its closed connection).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

/// Values read per page when loading pins or traffic states.
const PAGE: i64 = 128;

/// The largest answer a page may be (128 buckets of ~4,000 pins each fit).
const MAX_PAGE_BYTES: usize = 64 << 20;

/// How often a bucket write is retried when another proxy wrote the same bucket
/// meanwhile.
const PIN_RETRIES: usize = 16;

/// The store.
pub struct EtcdTopo {
    inner: Arc<Inner>,
    /// Dropped with the store: its watch and lease tasks see the channel close and
    /// stop (leases are then not revoked: etcd frees them after their TTL, as when
    /// the process dies).
    _alive: tokio::sync::watch::Sender<()>,
    alive_rx: tokio::sync::watch::Receiver<()>,
}

/// What the store's tasks share.
pub(crate) struct Inner {
    endpoints: Vec<String>,
    /// The key prefix, without a trailing `/`.
    prefix: String,
    /// The client, once connected; dropped after a call that failed for want of etcd,
    /// so the next call connects anew.
    client: tokio::sync::Mutex<Option<Client>>,
    /// Whether etcd answered the last call or the watch is established.
    reachable: AtomicBool,
    /// Since when it has not (while `reachable` is false).
    down_since: Mutex<Option<std::time::Instant>>,
    /// What a lease's key holds: who holds it.
    identity: Mutex<String>,
}

/// The key just after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A bucket's text as `workspace -> shard`; lines that do not parse are skipped.
fn parse_bucket(text: &str) -> BTreeMap<u64, String> {
    let mut pins = BTreeMap::new();
    for line in text.lines() {
        if let Some((ws, shard)) = line.split_once(' ') {
            if let Ok(ws) = ws.parse::<u64>() {
                pins.insert(ws, shard.to_string());
            }
        }
    }
    pins
}

fn bucket_text(pins: &BTreeMap<u64, String>) -> String {
    let mut out = String::with_capacity(pins.len() * 16);
    for (ws, shard) in pins {
        out.push_str(&ws.to_string());
        out.push(' ');
        out.push_str(shard);
        out.push('\n');
    }
    out
}

/// Whether an etcd error means etcd could not be reached (rather than that it
/// refused the request).
fn is_outage(e: &etcd_client::Error) -> bool {
    // gRPC status codes: 2 unknown, 4 deadline exceeded, 14 unavailable.
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 2 | 4 | 14),
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => false,
        _ => true,
    }
}

impl Inner {
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn current_key(&self) -> String {
        self.key("vschema/current")
    }

    fn version_key(&self, v: u64) -> String {
        self.key(&format!("vschema/v/{v:020}"))
    }

    fn bucket_key(&self, keyspace: &str, bucket: u64) -> String {
        self.key(&format!(
            "pins/{}/{bucket}",
            super::escape_component(keyspace)
        ))
    }

    fn traffic_key(&self, cluster: &str) -> String {
        self.key(&format!("traffic/{}", super::escape_component(cluster)))
    }

    fn lease_key(&self, name: &str) -> String {
        self.key(&format!("leases/{}", super::escape_component(name)))
    }

    pub(crate) fn set_reachable(&self, yes: bool) {
        let was = self.reachable.swap(yes, Ordering::Relaxed);
        if was != yes {
            *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) =
                (!yes).then(std::time::Instant::now);
        }
    }

    /// The client, connecting if there is none (lazily: the channel's connection is
    /// made by the first call).
    async fn client(&self) -> Result<Client, TopoError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_DEADLINE)
            // etcd closes connections that ping more often than every 5 s
            // (--grpc-keepalive-min-time).
            .with_keep_alive(KEEPALIVE_EVERY, CALL_DEADLINE)
            .with_keep_alive_while_idle(true);
        let c = Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|e| {
                TopoError::Unavailable(format!("etcd {}: {e}", self.endpoints.join(",")))
            })?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forgets the client after an outage, so that the next call connects anew.
    pub(crate) async fn drop_client(&self) {
        *self.client.lock().await = None;
    }

    /// Runs one etcd call with the deadline; notes whether etcd answered.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, TopoError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let run = async {
            let c = self.client().await?;
            f(c).await.map_err(|e| {
                if is_outage(&e) {
                    TopoError::Unavailable(format!("{what}: {e}"))
                } else {
                    TopoError::Corrupt(format!("{what}: etcd refused: {e}"))
                }
            })
        };
        let result = match crate::timer::timeout(CALL_DEADLINE, run).await {
            Ok(r) => r,
            Err(_) => Err(TopoError::Unavailable(format!(
                "{what}: etcd ({}) did not answer within {} s",
                self.endpoints.join(","),
                CALL_DEADLINE.as_secs()
            ))),
        };
        match &result {
            Err(TopoError::Unavailable(_)) => {
                self.set_reachable(false);
                self.drop_client().await;
            }
            _ => self.set_reachable(true),
        }
        result
    }

    /// Every key and value from `start` up to (not including) `end`, in pages.
    async fn range(
        &self,
        what: &str,
        start: Vec<u8>,
        end: Vec<u8>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, TopoError> {
        let mut out = Vec::new();
        let mut from = start;
        loop {
            let (page_from, page_end) = (from.clone(), end.clone());
            let mut resp = self
                .call(what, |c| async move {
                    // A page of large pin buckets can pass gRPC's default 4 MiB.
                    c.kv_client()
                        .max_decoding_message_size(MAX_PAGE_BYTES)
                        .get(
                            page_from,
                            Some(GetOptions::new().with_range(page_end).with_limit(PAGE)),
                        )
                        .await
                })
                .await?;
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                return Ok(out);
            };
            from = last.key().to_vec();
            from.push(0);
            out.extend(kvs.into_iter().map(|kv| {
                let (k, v) = kv.into_key_value();
                (k, v)
            }));
            if !more {
                return Ok(out);
            }
        }
    }

    fn parse_record(&self, key: &str, value: &[u8]) -> Result<VersionRecord, TopoError> {
        serde_json::from_slice(value)
            .map_err(|e| TopoError::Corrupt(format!("etcd key {key}: {e}")))
    }

    async fn get_one(&self, what: &str, key: String) -> Result<Option<(Vec<u8>, i64)>, TopoError> {
        let resp = self
            .call(what, |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    async fn current_number(&self) -> Result<u64, TopoError> {
        let key = self.current_key();
        match self
            .get_one("reading the current vschema version", key.clone())
            .await?
        {
            None => Ok(0),
            Some((v, _)) => parse_number(&key, &v),
        }
    }

    async fn read_version(&self, v: u64) -> Result<Option<VersionRecord>, TopoError> {
        let key = self.version_key(v);
        match self
            .get_one("reading a vschema version", key.clone())
            .await?
        {
            None => Ok(None),
            Some((value, _)) => self.parse_record(&key, &value).map(Some),
        }
    }

    async fn publish(&self, record: VersionRecord, expected: u64) -> Result<(), TopoError> {
        let current = self.current_key();
        let json = serde_json::to_vec(&record).map_err(|e| TopoError::Corrupt(e.to_string()))?;
        let compare = if expected == 0 {
            Compare::create_revision(current.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(current.clone(), CompareOp::Equal, expected.to_string())
        };
        let mut ops = vec![
            TxnOp::put(self.version_key(record.version), json, None),
            TxnOp::put(current.clone(), record.version.to_string(), None),
        ];
        if record.version > KEPT_VERSIONS {
            ops.push(TxnOp::delete(
                self.version_key(record.version - KEPT_VERSIONS),
                None,
            ));
        }
        let txn = Txn::new()
            .when([compare])
            .and_then(ops)
            .or_else([TxnOp::get(current.clone(), None)]);
        let resp = self
            .call("publishing a vschema version", |mut c| async move {
                c.txn(txn).await
            })
            .await?;
        if resp.succeeded() {
            return Ok(());
        }
        let mut now = 0;
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    now = parse_number(&current, kv.value())?;
                }
            }
        }
        Err(TopoError::Conflict { current: now })
    }

    async fn history(&self, limit: usize) -> Result<Vec<VersionRecord>, TopoError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = self.key("vschema/v/");
        let end = prefix_end(start.as_bytes());
        let limit = limit.min(KEPT_VERSIONS as usize) as i64;
        let resp = self
            .call("reading the vschema history", |mut c| async move {
                c.get(
                    start,
                    Some(
                        GetOptions::new()
                            .with_range(end)
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(limit),
                    ),
                )
                .await
            })
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| self.parse_record(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    async fn load_pins(&self) -> Result<Vec<KeyspacePins>, TopoError> {
        let root = self.key("pins/");
        let end = prefix_end(root.as_bytes());
        let kvs = self
            .range("loading the pin directory", root.clone().into_bytes(), end)
            .await?;
        let mut by_keyspace: BTreeMap<String, (KeyspacePins, BTreeMap<String, u32>)> =
            BTreeMap::new();
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(&key);
            let Some((ks, _bucket)) = key[root.len()..].split_once('/') else {
                continue;
            };
            let keyspace = super::unescape_component(ks);
            let (pins, index) = by_keyspace.entry(keyspace.clone()).or_insert_with(|| {
                (
                    KeyspacePins {
                        keyspace,
                        ..KeyspacePins::default()
                    },
                    BTreeMap::new(),
                )
            });
            let text = std::str::from_utf8(&value)
                .map_err(|_| TopoError::Corrupt(format!("etcd key {key}: not UTF-8")))?;
            for (n, line) in text.lines().enumerate() {
                let parsed = line
                    .split_once(' ')
                    .and_then(|(ws, shard)| ws.parse::<u64>().ok().map(|ws| (ws, shard)));
                let Some((ws, shard)) = parsed else {
                    return Err(TopoError::Corrupt(format!(
                        "etcd key {key} line {}: expected `workspace shard`",
                        n + 1
                    )));
                };
                let next = pins.shards.len() as u32;
                let i = *index.entry(shard.to_string()).or_insert_with(|| {
                    pins.shards.push(shard.to_string());
                    next
                });
                pins.pins.push((ws, i));
            }
        }
        Ok(by_keyspace.into_values().map(|(p, _)| p).collect())
    }

    async fn set_pin(&self, change: PinChange) -> Result<(), TopoError> {
        let key = self.bucket_key(&change.keyspace, change.workspace % PIN_BUCKETS);
        for _ in 0..PIN_RETRIES {
            let old = self.get_one("reading a pin bucket", key.clone()).await?;
            let (text, revision) = match &old {
                Some((v, rev)) => (String::from_utf8_lossy(v).into_owned(), *rev),
                None => (String::new(), 0),
            };
            let mut pins = parse_bucket(&text);
            match &change.shard {
                Some(s) => {
                    pins.insert(change.workspace, s.clone());
                }
                None => {
                    pins.remove(&change.workspace);
                }
            }
            let compare = if old.is_some() {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
            } else {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            };
            let op = if pins.is_empty() {
                TxnOp::delete(key.clone(), None)
            } else {
                TxnOp::put(key.clone(), bucket_text(&pins), None)
            };
            let txn = Txn::new().when([compare]).and_then([op]);
            let resp = self
                .call(
                    "writing a pin bucket",
                    |mut c| async move { c.txn(txn).await },
                )
                .await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(TopoError::Unavailable(format!(
            "pin bucket {key}: changed by other proxies {PIN_RETRIES} times in a row; try again"
        )))
    }

    async fn save_traffic(&self, cluster: String, state: String) -> Result<(), TopoError> {
        let key = self.traffic_key(&cluster);
        self.call("saving a cluster's traffic state", |mut c| async move {
            c.put(key, state, None).await
        })
        .await
        .map(|_| ())
    }

    async fn load_traffic(&self) -> Result<Vec<(String, String)>, TopoError> {
        let root = self.key("traffic/");
        let end = prefix_end(root.as_bytes());
        let kvs = self
            .range("loading traffic states", root.clone().into_bytes(), end)
            .await?;
        let mut out = Vec::new();
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(&key);
            let cluster = super::unescape_component(&key[root.len()..]);
            out.push((cluster, String::from_utf8_lossy(&value).into_owned()));
        }
        Ok(out)
    }
}

fn parse_number(key: &str, value: &[u8]) -> Result<u64, TopoError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| TopoError::Corrupt(format!("etcd key {key}: not a version number")))
}

/// Who this process is, until [`Topo::set_identity`] says more.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!("{host} pid {}", std::process::id())
}

impl EtcdTopo {
    /// The store on the etcd cluster at `endpoints` (`host:port` or URLs), under
    /// `prefix` (starting with `/`, no trailing `/`). Nothing is connected until the
    /// first call.
    pub fn new(endpoints: Vec<String>, prefix: String) -> EtcdTopo {
        let (alive, alive_rx) = tokio::sync::watch::channel(());
        EtcdTopo {
            inner: Arc::new(Inner {
                endpoints,
                prefix: prefix.trim_end_matches('/').to_string(),
                client: tokio::sync::Mutex::new(None),
                reachable: AtomicBool::new(true),
                down_since: Mutex::new(None),
                identity: Mutex::new(default_identity()),
            }),
            _alive: alive,
            alive_rx,
        }
    }

    /// The identity this store puts in the leases it takes.
    pub fn identity(&self) -> String {
        self.inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Topo for EtcdTopo {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn current(&self) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>> {
        Box::pin(async move {
            let v = self.inner.current_number().await?;
            if v == 0 {
                return Ok(None);
            }
            self.inner.read_version(v).await
        })
    }

    fn publish(&self, record: VersionRecord, expected: u64) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(self.inner.publish(record, expected))
    }

    fn history(&self, limit: usize) -> BoxFut<'_, Result<Vec<VersionRecord>, TopoError>> {
        Box::pin(self.inner.history(limit))
    }

    fn version(&self, version: u64) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>> {
        Box::pin(self.inner.read_version(version))
    }

    fn load_pins(&self) -> BoxFut<'_, Result<Vec<KeyspacePins>, TopoError>> {
        Box::pin(self.inner.load_pins())
    }

    fn set_pin(&self, change: PinChange) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(self.inner.set_pin(change))
    }

    fn save_traffic(&self, cluster: String, state: String) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(self.inner.save_traffic(cluster, state))
    }

    fn load_traffic(&self) -> BoxFut<'_, Result<Vec<(String, String)>, TopoError>> {
        Box::pin(self.inner.load_traffic())
    }

    fn lease(
        &self,
        name: String,
        ttl: Duration,
    ) -> BoxFut<'_, Result<Option<Box<dyn Lease>>, TopoError>> {
        Box::pin(lease::take(
            self.inner.clone(),
            self.alive_rx.clone(),
            name,
            ttl,
        ))
    }

    fn lease_holder(&self, name: String) -> BoxFut<'_, Result<Option<String>, TopoError>> {
        Box::pin(async move {
            let key = self.inner.lease_key(&name);
            Ok(self
                .inner
                .get_one("reading a lease", key)
                .await?
                .map(|(v, _)| String::from_utf8_lossy(&v).into_owned()))
        })
    }

    fn set_identity(&self, identity: String) {
        *self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = identity;
    }

    fn watch(&self) -> tokio::sync::mpsc::Receiver<Event> {
        watch::start(self.inner.clone(), self.alive_rx.clone())
    }

    fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    fn unreachable_for(&self) -> Option<Duration> {
        self.inner
            .down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_into_one_key_component_and_back() {
        for name in ["chat", "chat/x", "a b%c", "ü"] {
            let c = crate::topo::escape_component(name);
            assert!(!c.contains('/'), "{c}");
            assert_eq!(crate::topo::unescape_component(&c), name);
        }
        assert_eq!(prefix_end(b"/p/pins/"), b"/p/pins0".to_vec());
    }

    #[test]
    fn a_bucket_round_trips_through_its_text() {
        let mut pins = BTreeMap::new();
        pins.insert(1025u64, "-80".to_string());
        pins.insert(1u64, "80-".to_string());
        assert_eq!(bucket_text(&pins), "1 80-\n1025 -80\n");
        assert_eq!(parse_bucket(&bucket_text(&pins)), pins);
    }
}
