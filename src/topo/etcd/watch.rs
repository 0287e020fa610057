//! The watch of an etcd store: one task per [`crate::topo::Topo::watch`] caller that
//! watches the store's whole prefix and turns puts into [`Event`]s. A watch broken by
//! an outage (or never established) is retried every [`RETRY`]; the caller is told
//! with `Event::Reachable(false)` when it broke and `Event::Reachable(true)` once it
//! is back (then it reloads everything, since changes made meanwhile were not seen).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{parse_bucket, Inner, CALL_DEADLINE};
use crate::topo::unescape_component as uncomponent;
use crate::topo::{Event, PinChange, TopoError};

/// Events queued for a watcher; a full queue holds the watch (etcd then buffers).
pub const QUEUE: usize = 1024;

/// How long the task waits between attempts to re-establish a broken watch.
pub const RETRY: Duration = Duration::from_millis(300);

/// Starts the task; events go to the receiver returned.
pub(super) fn start(
    inner: Arc<Inner>,
    alive: tokio::sync::watch::Receiver<()>,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(inner, alive, tx));
    rx
}

/// Opens the watch and waits until etcd confirms it (so no later change is missed).
async fn open(inner: &Inner) -> Result<etcd_client::WatchStream, TopoError> {
    let root = inner.key("");
    let mut stream = inner
        .call("watching the store", |mut c| async move {
            c.watch(
                root,
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await
        })
        .await?;
    match crate::timer::timeout(CALL_DEADLINE, stream.message()).await {
        Ok(Ok(Some(r))) if r.created() && !r.canceled() => Ok(stream),
        Ok(Ok(Some(r))) => Err(TopoError::Unavailable(format!(
            "etcd did not create the watch: {}",
            r.cancel_reason()
        ))),
        Ok(Ok(None)) => Err(TopoError::Unavailable("etcd closed the watch".into())),
        Ok(Err(e)) => Err(TopoError::Unavailable(format!("watch: {e}"))),
        Err(_) => Err(TopoError::Unavailable(
            "etcd did not confirm the watch in time".into(),
        )),
    }
}

async fn run(
    inner: Arc<Inner>,
    mut alive: tokio::sync::watch::Receiver<()>,
    tx: mpsc::Sender<Event>,
) {
    // Whether the watcher was told the store is unreachable (and not yet that it is
    // back).
    let mut told_down = false;
    loop {
        match open(&inner).await {
            Ok(mut stream) => {
                inner.set_reachable(true);
                if told_down {
                    tracing::info!("etcd is reachable again; watching the store");
                    if tx.send(Event::Reachable(true)).await.is_err() {
                        return;
                    }
                    told_down = false;
                }
                loop {
                    tokio::select! {
                        _ = alive.changed() => return,
                        _ = tx.closed() => return,
                        m = stream.message() => match m {
                            Ok(Some(resp)) => {
                                if resp.canceled() {
                                    tracing::warn!(reason = resp.cancel_reason(), "etcd canceled the watch");
                                    break;
                                }
                                for ev in resp.events() {
                                    for e in to_events(&inner, ev) {
                                        if tx.send(e).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "etcd watch broken");
                                break;
                            }
                        },
                    }
                }
            }
            Err(e) => {
                if !told_down {
                    tracing::warn!(error = %e, "etcd watch not established");
                }
            }
        }
        inner.set_reachable(false);
        inner.drop_client().await;
        if !told_down {
            tracing::warn!("etcd unreachable: serving the last snapshot until it is back");
            if tx.send(Event::Reachable(false)).await.is_err() {
                return;
            }
            told_down = true;
        }
        tokio::select! {
            _ = alive.changed() => return,
            _ = tx.closed() => return,
            _ = crate::timer::sleep(RETRY) => {}
        }
    }
}

/// What one etcd event means for the proxy: nothing (the current-version key, leases,
/// deleted versions), one event, or one per pin changed in a bucket.
fn to_events(inner: &Inner, ev: &etcd_client::Event) -> Vec<Event> {
    let Some(kv) = ev.kv() else {
        return Vec::new();
    };
    let root = inner.key("");
    let key = String::from_utf8_lossy(kv.key());
    let Some(rest) = key.strip_prefix(&root) else {
        return Vec::new();
    };
    let put = ev.event_type() == EventType::Put;
    if let Some(_v) = rest.strip_prefix("vschema/v/") {
        if !put {
            return Vec::new();
        }
        return match inner.parse_record(&key, kv.value()) {
            Ok(r) => vec![Event::Vschema(r)],
            Err(e) => {
                tracing::warn!(error = %e, "etcd: a vschema version that does not parse, ignored");
                Vec::new()
            }
        };
    }
    if let Some(p) = rest.strip_prefix("pins/") {
        let Some((ks, _bucket)) = p.split_once('/') else {
            return Vec::new();
        };
        let keyspace = uncomponent(ks);
        let old = ev
            .prev_kv()
            .map(|kv| parse_bucket(&String::from_utf8_lossy(kv.value())))
            .unwrap_or_default();
        let new = if put {
            parse_bucket(&String::from_utf8_lossy(kv.value()))
        } else {
            Default::default()
        };
        let mut out = Vec::new();
        for (ws, shard) in &new {
            if old.get(ws) != Some(shard) {
                out.push(Event::Pin(PinChange {
                    keyspace: keyspace.clone(),
                    workspace: *ws,
                    shard: Some(shard.clone()),
                }));
            }
        }
        for ws in old.keys() {
            if !new.contains_key(ws) {
                out.push(Event::Pin(PinChange {
                    keyspace: keyspace.clone(),
                    workspace: *ws,
                    shard: None,
                }));
            }
        }
        return out;
    }
    if let Some(cluster) = rest.strip_prefix("traffic/") {
        if put {
            return vec![Event::Traffic {
                cluster: uncomponent(cluster),
                state: String::from_utf8_lossy(kv.value()).into_owned(),
            }];
        }
    }
    Vec::new()
}
