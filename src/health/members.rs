//! The standbys of a cluster, as the monitor sees them each second: reachable or not,
//! replication threads running, lag (from the heartbeat row the primary's probe
//! writes, read on the standby), GTID position, `read_only`. A failover picks its
//! target from these.

use std::time::Duration;

use crate::backend::SqlConn;
use crate::vschema::Cluster;

/// One standby's state at its last probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StandbyStatus {
    /// `host:port`.
    pub addr: String,
    /// It answered the last probe.
    pub reachable: bool,
    /// Why the last probe failed, if it did.
    pub error: Option<String>,
    /// `Slave_IO_Running` and `Slave_SQL_Running` are both `Yes`.
    pub replicating: bool,
    /// How far behind the primary's heartbeat it is.
    pub lag: Option<Duration>,
    /// `@@gtid_current_pos`: what it has applied.
    pub gtid_current_pos: String,
    /// `Gtid_IO_Pos`: what it has received (applied or not).
    pub gtid_io_pos: String,
    /// `@@read_only`.
    pub read_only: bool,
}

impl StandbyStatus {
    /// `healthy` (reachable, replicating, lag under `max_lag`), `lagging`, `broken`
    /// (replication stopped) or `unreachable`.
    pub fn state(&self, max_lag: Duration) -> &'static str {
        if !self.reachable {
            "unreachable"
        } else if !self.replicating {
            "broken"
        } else if self.lag.is_none_or(|l| l > max_lag) {
            "lagging"
        } else {
            "healthy"
        }
    }
}

/// The cluster as seen from one of its standbys: same user, other address.
pub fn member(cluster: &Cluster, addr: &str) -> Cluster {
    Cluster {
        primary: addr.to_string(),
        standbys: Vec::new(),
        ..cluster.clone()
    }
}

/// Probes one standby within `timeout` (connect included).
pub async fn probe_standby(cluster: &Cluster, addr: &str, timeout: Duration) -> StandbyStatus {
    let mut s = StandbyStatus {
        addr: addr.to_string(),
        ..StandbyStatus::default()
    };
    match crate::timer::timeout(timeout, read_standby(&member(cluster, addr), timeout)).await {
        Ok(Ok(read)) => {
            s = read;
            s.addr = addr.to_string();
            s.reachable = true;
        }
        Ok(Err(e)) => s.error = Some(e),
        Err(_) => s.error = Some(format!("no answer within {} ms", timeout.as_millis())),
    }
    s
}

async fn read_standby(m: &Cluster, timeout: Duration) -> Result<StandbyStatus, String> {
    let mut c = SqlConn::connect(m, None, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let status = c
        .query("SHOW SLAVE STATUS")
        .await
        .map_err(|e| e.to_string())?;
    let field = |name: &str| -> Option<String> {
        let i = status.columns.iter().position(|c| c == name)?;
        status.rows.first()?.get(i)?.clone()
    };
    let replicating = field("Slave_IO_Running").as_deref() == Some("Yes")
        && field("Slave_SQL_Running").as_deref() == Some("Yes");
    let gtid_io_pos = field("Gtid_IO_Pos").unwrap_or_default();
    let vars = c
        .query("SELECT @@gtid_current_pos, @@read_only")
        .await
        .map_err(|e| e.to_string())?;
    let row = vars.rows.first().cloned().unwrap_or_default();
    let gtid_current_pos = row.first().cloned().flatten().unwrap_or_default();
    let read_only = row.get(1).cloned().flatten().as_deref() == Some("1");
    // The heartbeat row is written on the primary every second; how old it is here is
    // the lag (table missing: nothing replicated yet).
    let lag = c
        .query(
            "SELECT TIMESTAMPDIFF(MICROSECOND, ts, NOW(6)) FROM _shardgate.heartbeat WHERE id = 1",
        )
        .await
        .ok()
        .and_then(|r| r.scalar().and_then(|v| v.parse::<i64>().ok()))
        .map(|us| Duration::from_micros(us.max(0) as u64));
    Ok(StandbyStatus {
        addr: String::new(),
        reachable: true,
        error: None,
        replicating,
        lag,
        gtid_current_pos,
        gtid_io_pos,
        read_only,
    })
}

/// Probes every standby of `cluster` at once.
pub async fn probe_all(cluster: &Cluster, timeout: Duration) -> Vec<StandbyStatus> {
    crate::admin::control::join_all(
        cluster
            .standbys
            .iter()
            .map(|a| probe_standby(cluster, a, timeout))
            .collect(),
    )
    .await
}

/// Orders GTID positions (`0-1-100,1-2-7`): the total of the sequence numbers, which
/// is monotonic for a standby replicating from one primary. Used only to pick the most
/// advanced standby.
pub fn gtid_progress(pos: &str) -> u64 {
    pos.split(',')
        .filter_map(|g| g.trim().rsplit('-').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_progress_sums_the_domains() {
        assert_eq!(gtid_progress(""), 0);
        assert_eq!(gtid_progress("0-1-100"), 100);
        assert_eq!(gtid_progress("0-1-100,1-2-7"), 107);
        assert!(gtid_progress("0-2-101") > gtid_progress("0-1-100"));
    }

    #[test]
    fn a_standby_state_reads_its_probe() {
        let mut s = StandbyStatus {
            reachable: true,
            replicating: true,
            lag: Some(Duration::from_millis(200)),
            ..StandbyStatus::default()
        };
        let max = Duration::from_secs(5);
        assert_eq!(s.state(max), "healthy");
        s.lag = Some(Duration::from_secs(9));
        assert_eq!(s.state(max), "lagging");
        s.replicating = false;
        assert_eq!(s.state(max), "broken");
        s.reachable = false;
        assert_eq!(s.state(max), "unreachable");
    }
}
