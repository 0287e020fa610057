//! Leases on etcd: an etcd lease with the requested TTL, a key put under it only if
//! absent (so one proxy of the fleet holds it), and a task that renews it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{Inner, CALL_DEADLINE};
use crate::topo::{Lease, TopoError};

/// A lease this proxy holds.
struct EtcdLease {
    held: Arc<AtomicBool>,
    /// Dropped with the lease: the renewing task revokes it.
    _release: tokio::sync::oneshot::Sender<()>,
}

impl Lease for EtcdLease {
    fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

/// Revokes lease `id` (its key goes with it), within the deadline; best effort.
async fn revoke(inner: &Inner, id: i64) {
    let r = inner
        .call("revoking a lease", |mut c| async move {
            c.lease_revoke(id).await
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(lease = id, error = %e, "etcd lease not revoked; it expires after its TTL");
    }
}

/// Takes the lease `name` for `ttl`, or None when another proxy holds it.
pub(super) async fn take(
    inner: Arc<Inner>,
    alive: tokio::sync::watch::Receiver<()>,
    name: String,
    ttl: Duration,
) -> Result<Option<Box<dyn Lease>>, TopoError> {
    let ttl_s = ttl.as_secs().max(1) as i64 + i64::from(ttl.subsec_nanos() > 0);
    let grant = inner
        .call("granting a lease", |mut c| async move {
            c.lease_grant(ttl_s, None).await
        })
        .await?;
    let id = grant.id();
    let key = inner.lease_key(&name);
    let identity = inner
        .identity
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            identity,
            Some(PutOptions::new().with_lease(id)),
        )]);
    let created = match inner
        .call("taking a lease", |mut c| async move { c.txn(txn).await })
        .await
    {
        Ok(r) => r.succeeded(),
        Err(e) => {
            revoke(&inner, id).await;
            return Err(e);
        }
    };
    if !created {
        revoke(&inner, id).await;
        return Ok(None);
    }
    let keeper = inner
        .call("renewing a lease", |mut c| async move {
            c.lease_keep_alive(id).await
        })
        .await;
    let (keeper, stream) = match keeper {
        Ok(k) => k,
        Err(e) => {
            revoke(&inner, id).await;
            return Err(e);
        }
    };
    let held = Arc::new(AtomicBool::new(true));
    let (release, released) = tokio::sync::oneshot::channel();
    tokio::spawn(renew(
        inner,
        alive,
        keeper,
        stream,
        id,
        ttl,
        held.clone(),
        released,
    ));
    Ok(Some(Box::new(EtcdLease {
        held,
        _release: release,
    })))
}

/// Renews lease `id` every third of its TTL until the lease is dropped (then revokes
/// it), the store is dropped (then leaves it to expire, as a dead process would), or
/// a renewal fails (then the lease counts as lost).
#[allow(clippy::too_many_arguments)]
async fn renew(
    inner: Arc<Inner>,
    mut alive: tokio::sync::watch::Receiver<()>,
    mut keeper: etcd_client::LeaseKeeper,
    mut stream: etcd_client::LeaseKeepAliveStream,
    id: i64,
    ttl: Duration,
    held: Arc<AtomicBool>,
    mut released: tokio::sync::oneshot::Receiver<()>,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = &mut released => {
                held.store(false, Ordering::Release);
                revoke(&inner, id).await;
                return;
            }
            _ = alive.changed() => {
                held.store(false, Ordering::Release);
                return;
            }
            _ = crate::timer::sleep(every) => {
                let renewed = crate::timer::timeout(CALL_DEADLINE, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match renewed {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    other => {
                        held.store(false, Ordering::Release);
                        tracing::warn!(lease = id, outcome = ?other.map(|r| r.map(|m| m.map(|m| m.ttl()))), "etcd lease lost: not renewed");
                        // Wait to be dropped, then try a revoke (etcd may be back).
                        tokio::select! {
                            _ = &mut released => revoke(&inner, id).await,
                            _ = alive.changed() => {}
                        }
                        return;
                    }
                }
            }
        }
    }
}
