//! Replicated local clusters: a primary and its standbys, each a [`LocalMariaDb`],
//! for the tests and `shardgate demo --standbys N`.
//!
//! Every member of a replicated cluster writes a binary log (row format, replicas'
//! changes logged too, so any standby can become the primary), runs with
//! `gtid_strict_mode` and has MariaDB's built-in semi-synchronous replication switched
//! on both ways. Standbys replicate from the primary with GTID positions
//! (`MASTER_USE_GTID=slave_pos`) and are `read_only`. A cluster without standbys is one
//! plain server with the binary log off, exactly like [`LocalMariaDb::start`] with the
//! default options, so the many tests that need no replication stay as fast as before.
//!
//! Semi-sync: the primary's commit returns once one standby has acknowledged the
//! transaction's events (`AFTER_SYNC`: written to the primary's binary log, received
//! by a standby, and only then committed in InnoDB and visible). If no standby
//! acknowledges within [`DEFAULT_SEMI_SYNC_TIMEOUT`] (1 s) the primary falls back to
//! asynchronous replication until a standby catches up again. MariaDB's default is
//! 10 s, which would make every write stall for 10 s when a standby is stopped or
//! paused; the price of the short timeout is that writes acknowledged during the
//! fallback may be lost if the primary fails before a standby has them.

use std::io;
use std::process::Command;
use std::time::{Duration, Instant};

use super::localdb::{LocalDbOptions, LocalMariaDb};
use crate::backend::quote_literal;

/// How long a primary waits for a standby's acknowledgement before it falls back to
/// asynchronous replication.
pub const DEFAULT_SEMI_SYNC_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long starting a cluster may wait for its standbys to connect and catch up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Database the start-up check writes its marker row to; dropped again afterwards.
const MARKER_DATABASE: &str = "shardgate_replication_check";

/// What makes a [`LocalMariaDb`] a member of a replicated cluster (the binary log,
/// GTID, semi-sync and `read_only` options it starts with). Part of
/// [`LocalDbOptions::replication`]; `None` there means the binary log is off.
#[derive(Debug, Clone)]
pub struct ReplicationMember {
    /// `server_id`, unique within the cluster.
    pub server_id: u32,
    /// Start with `read_only=ON` (standbys).
    pub read_only: bool,
    /// `rpl_semi_sync_master_timeout`: how long a commit waits for a standby's
    /// acknowledgement before the primary falls back to asynchronous replication.
    pub semi_sync_timeout: Duration,
}

/// Adds a member's replication options to its `mariadbd` command line.
pub(super) fn member_args(cmd: &mut Command, member: &ReplicationMember) {
    cmd.arg(format!("--server-id={}", member.server_id))
        // Fixed names: the default ones contain the host name.
        .arg("--log-bin=mariadb-bin")
        .arg("--relay-log=mariadb-relay-bin")
        // A standby's binary log must hold what it replicated, so that it can serve
        // the others after it is promoted.
        .arg("--log-slave-updates=ON")
        .arg("--binlog-format=ROW")
        .arg("--gtid-strict-mode=ON")
        .arg("--rpl-semi-sync-master-enabled=ON")
        .arg("--rpl-semi-sync-master-wait-point=AFTER_SYNC")
        .arg(format!(
            "--rpl-semi-sync-master-timeout={}",
            member.semi_sync_timeout.as_millis()
        ))
        // A member with no semi-sync replica connected (every standby, or a primary
        // whose standbys have all disconnected) commits at once instead of waiting the
        // full timeout on its first commit.
        .arg("--rpl-semi-sync-master-wait-no-slave=OFF")
        .arg("--rpl-semi-sync-slave-enabled=ON")
        // A standby notices a dead primary (and reconnects) within seconds, not the
        // default minute; the primary sends heartbeats every second (see
        // `replicate_from`).
        .arg("--slave-net-timeout=5")
        // Replication is configured by the harness, never resumed on its own.
        .arg("--skip-slave-start")
        .arg(format!(
            "--read-only={}",
            if member.read_only { "ON" } else { "OFF" }
        ));
}

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Options every member starts with; `port` is the primary's, `replication` is
    /// filled in per member.
    pub server: LocalDbOptions,
    /// Number of standbys; 0 starts one plain server with the binary log off.
    pub standbys: usize,
    /// The standbys' ports, one per standby; empty picks free ones.
    pub standby_ports: Vec<u16>,
    /// The members' `rpl_semi_sync_master_timeout`.
    pub semi_sync_timeout: Duration,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            server: LocalDbOptions::default(),
            standbys: 0,
            standby_ports: Vec::new(),
            semi_sync_timeout: DEFAULT_SEMI_SYNC_TIMEOUT,
        }
    }
}

/// A primary and its standbys, replicating; every server is stopped and removed when
/// the value is dropped.
#[derive(Debug)]
pub struct LocalCluster {
    /// The server that takes writes.
    pub primary: LocalMariaDb,
    /// Servers replicating from the primary, `read_only`.
    pub standbys: Vec<LocalMariaDb>,
    /// How long the start took, until every standby had the primary's marker row.
    pub started_in: Duration,
}

impl LocalCluster {
    /// Starts every member in parallel, points the standbys at the primary and returns
    /// once both replication threads run on every standby, each is a semi-sync client
    /// of the primary, and a row written on the primary is visible on every standby.
    /// Blocking.
    pub fn start(opts: &LocalClusterOptions) -> io::Result<LocalCluster> {
        let begun = Instant::now();
        if !opts.standby_ports.is_empty() && opts.standby_ports.len() != opts.standbys {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} standby ports given for {} standbys",
                    opts.standby_ports.len(),
                    opts.standbys
                ),
            ));
        }
        let mut members = vec![opts.server.clone()];
        if opts.standbys > 0 {
            members[0].replication = Some(ReplicationMember {
                server_id: 1,
                read_only: false,
                semi_sync_timeout: opts.semi_sync_timeout,
            });
        }
        for i in 0..opts.standbys {
            members.push(LocalDbOptions {
                port: opts.standby_ports.get(i).copied(),
                replication: Some(ReplicationMember {
                    server_id: u32::try_from(i + 2).unwrap_or(u32::MAX),
                    read_only: true,
                    semi_sync_timeout: opts.semi_sync_timeout,
                }),
                ..opts.server.clone()
            });
        }
        let mut servers = start_all(&members)?.into_iter();
        let primary = servers
            .next()
            .ok_or_else(|| io::Error::other("no primary started"))?;
        let mut cluster = LocalCluster {
            primary,
            standbys: servers.collect(),
            started_in: Duration::ZERO,
        };
        if !cluster.standbys.is_empty() {
            cluster.connect_standbys()?;
        }
        cluster.started_in = begun.elapsed();
        Ok(cluster)
    }

    /// The standbys' `127.0.0.1:PORT` addresses.
    pub fn standby_addrs(&self) -> Vec<String> {
        self.standbys.iter().map(LocalMariaDb::addr).collect()
    }

    /// The primary, then the standbys.
    pub fn members(&self) -> impl Iterator<Item = &LocalMariaDb> {
        std::iter::once(&self.primary).chain(&self.standbys)
    }

    /// Waits until every standby has applied everything in the primary's binary log
    /// (`@@gtid_binlog_pos`, read once at the call), for at most `timeout` in all.
    pub fn wait_caught_up(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let pos = self.primary.gtid_binlog_pos()?;
        for standby in &self.standbys {
            standby.wait_for_gtid(&pos, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// A planned switchover to `self.standbys[index]`, as an operator (or shardgate)
    /// would do it: the primary stops taking writes (`read_only`), the chosen standby
    /// applies everything the primary wrote, stops replicating and takes writes, and
    /// every other member, the old primary included, replicates from it. Afterwards
    /// `self.primary` is the new primary and the old one sits at `self.standbys[index]`.
    /// Nothing acknowledged is lost; `timeout` bounds each wait.
    pub fn switch_over(&mut self, index: usize, timeout: Duration) -> io::Result<()> {
        if index >= self.standbys.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "no standby {index}; the cluster has {}",
                    self.standbys.len()
                ),
            ));
        }
        self.primary.set_read_only(true)?;
        let pos = self.primary.gtid_binlog_pos()?;
        let chosen = &self.standbys[index];
        chosen.wait_for_gtid(&pos, timeout)?;
        chosen.stop_replicating()?;
        chosen.set_read_only(false)?;
        std::mem::swap(&mut self.primary, &mut self.standbys[index]);
        for standby in &self.standbys {
            standby.replicate_from(&self.primary)?;
        }
        for standby in &self.standbys {
            standby.wait_replicating(timeout)?;
        }
        Ok(())
    }

    /// Stops every server (standbys first, so none of them reconnects to a primary that
    /// is going away) and removes their directories. Dropping the value does the same.
    pub fn stop(self) {
        for standby in self.standbys {
            standby.stop();
        }
        self.primary.stop();
    }

    fn connect_standbys(&self) -> io::Result<()> {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        for standby in &self.standbys {
            standby.replicate_from(&self.primary)?;
        }
        for standby in &self.standbys {
            standby.wait_replicating(deadline.saturating_duration_since(Instant::now()))?;
        }
        // Until a standby has registered as a semi-sync client, the primary's commits
        // do not wait for it; the checks below are only meaningful after that.
        let want = self.standbys.len().to_string();
        wait_until(deadline, || {
            let clients = self.primary.global_status("Rpl_semi_sync_master_clients")?;
            Ok(if clients == want {
                Ok(())
            } else {
                Err(format!(
                    "the primary has {clients} semi-sync clients, expected {want}"
                ))
            })
        })?;
        let token = format!("{}-{}", std::process::id(), self.primary.port);
        self.primary.sql(&format!(
            "CREATE DATABASE {MARKER_DATABASE};\n\
             CREATE TABLE {MARKER_DATABASE}.marker (token VARCHAR(64) PRIMARY KEY);\n\
             INSERT INTO {MARKER_DATABASE}.marker VALUES ({});",
            quote_literal(&token)
        ))?;
        self.wait_caught_up(deadline.saturating_duration_since(Instant::now()))?;
        for standby in &self.standbys {
            let seen = standby.sql(&format!("SELECT token FROM {MARKER_DATABASE}.marker"))?;
            if seen.trim() != token {
                return Err(io::Error::other(format!(
                    "standby {} caught up but shows marker {:?}, expected {token:?}",
                    standby.addr(),
                    seen.trim()
                )));
            }
        }
        // Leave the servers as empty as a plain one.
        self.primary
            .sql(&format!("DROP DATABASE {MARKER_DATABASE}"))?;
        self.wait_caught_up(deadline.saturating_duration_since(Instant::now()))
    }
}

/// One standby's replication state, from `SHOW SLAVE STATUS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// `Master_Port`: the primary it replicates from.
    pub master_port: String,
    /// `Slave_IO_Running`: `Yes`, `No` or `Connecting`.
    pub io_running: String,
    /// `Slave_SQL_Running`: `Yes` or `No`.
    pub sql_running: String,
    /// `Last_IO_Error`, empty if none.
    pub last_io_error: String,
    /// `Last_SQL_Error`, empty if none.
    pub last_sql_error: String,
    /// `Gtid_IO_Pos`: the last GTID received from the primary.
    pub gtid_io_pos: String,
}

impl ReplicaStatus {
    /// Parses the batch output of `SHOW SLAVE STATUS` with column names (a header
    /// line and a value line, tab-separated); None when there is no value line
    /// (replication is not configured).
    fn parse(text: &str) -> Option<ReplicaStatus> {
        let mut lines = text.lines();
        let names = lines.next()?.split('\t');
        let values = lines.next()?.split('\t');
        let mut status = ReplicaStatus::default();
        for (name, value) in names.zip(values) {
            let field = match name {
                "Master_Port" => &mut status.master_port,
                "Slave_IO_Running" => &mut status.io_running,
                "Slave_SQL_Running" => &mut status.sql_running,
                "Last_IO_Error" => &mut status.last_io_error,
                "Last_SQL_Error" => &mut status.last_sql_error,
                "Gtid_IO_Pos" => &mut status.gtid_io_pos,
                _ => continue,
            };
            *field = value.to_string();
        }
        Some(status)
    }

    /// Both replication threads are running.
    pub fn running(&self) -> bool {
        self.io_running == "Yes" && self.sql_running == "Yes"
    }
}

/// Replication on one server. Everything runs as root over the unix socket.
impl LocalMariaDb {
    /// Makes this server replicate from `primary` (any replication already configured
    /// is stopped and replaced): `CHANGE MASTER TO` the primary's TCP address with the
    /// primary's user (all privileges, so `REPLICATION SLAVE` too), GTID positions,
    /// then `START SLAVE`. Returns without waiting; see
    /// [`LocalMariaDb::wait_replicating`].
    ///
    /// The replication position starts at `@@gtid_current_pos`: for a standby that is
    /// what it has applied; for a demoted primary it is its own last transaction,
    /// which `slave_pos` alone would not know (its `gtid_slave_pos` is empty), so it
    /// would ask the new primary for everything from the beginning.
    pub fn replicate_from(&self, primary: &LocalMariaDb) -> io::Result<()> {
        let stop = if self.replica_status()?.is_some() {
            "STOP SLAVE;\n"
        } else {
            ""
        };
        self.sql(&format!(
            "{stop}SET GLOBAL gtid_slave_pos = @@gtid_current_pos;\n\
             CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER={}, \
             MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
             MASTER_HEARTBEAT_PERIOD=1;\n\
             START SLAVE;",
            primary.port,
            quote_literal(&primary.user),
            quote_literal(&primary.password)
        ))
        .map(|_| ())
    }

    /// Stops replicating and forgets the primary (`STOP SLAVE; RESET SLAVE ALL`), as on
    /// a standby being promoted. The GTID position it reached is kept.
    pub fn stop_replicating(&self) -> io::Result<()> {
        self.sql("STOP SLAVE;\nRESET SLAVE ALL;").map(|_| ())
    }

    /// `SET GLOBAL read_only`.
    pub fn set_read_only(&self, read_only: bool) -> io::Result<()> {
        self.sql(&format!("SET GLOBAL read_only = {}", u8::from(read_only)))
            .map(|_| ())
    }

    /// `SHOW SLAVE STATUS`, or None when this server replicates from nothing.
    pub fn replica_status(&self) -> io::Result<Option<ReplicaStatus>> {
        Ok(ReplicaStatus::parse(
            &self.sql_with_column_names("SHOW SLAVE STATUS")?,
        ))
    }

    /// Waits until both replication threads run, for at most `timeout`; the error
    /// carries the last replication errors.
    pub fn wait_replicating(&self, timeout: Duration) -> io::Result<()> {
        wait_until(Instant::now() + timeout, || {
            Ok(match self.replica_status()? {
                Some(status) if status.running() => Ok(()),
                Some(status) => Err(format!(
                    "replication on {} from port {} not running: IO thread {}, SQL thread {}; \
                     last IO error {:?}, last SQL error {:?}",
                    self.addr(),
                    status.master_port,
                    status.io_running,
                    status.sql_running,
                    status.last_io_error,
                    status.last_sql_error
                )),
                None => Err(format!("{} is not configured to replicate", self.addr())),
            })
        })
    }

    /// `@@gtid_binlog_pos`: the last transaction in its binary log, per domain.
    pub fn gtid_binlog_pos(&self) -> io::Result<String> {
        self.sql("SELECT @@gtid_binlog_pos")
            .map(|out| out.trim().to_string())
    }

    /// Waits until this server has applied the GTID position `pos`, for at most
    /// `timeout` (`MASTER_GTID_WAIT`).
    pub fn wait_for_gtid(&self, pos: &str, timeout: Duration) -> io::Result<()> {
        let answer = self.sql(&format!(
            "SELECT MASTER_GTID_WAIT({}, {:.3})",
            quote_literal(pos),
            timeout.as_secs_f64()
        ))?;
        match answer.trim() {
            "0" => Ok(()),
            other => {
                let status = self.replica_status().ok().flatten().unwrap_or_default();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not reach GTID position {pos:?} within {timeout:?} \
                         (MASTER_GTID_WAIT answered {other}); it has {:?}, IO thread {}, \
                         SQL thread {}, last IO error {:?}, last SQL error {:?}",
                        self.addr(),
                        self.sql("SELECT @@gtid_slave_pos")
                            .unwrap_or_default()
                            .trim(),
                        status.io_running,
                        status.sql_running,
                        status.last_io_error,
                        status.last_sql_error
                    ),
                ))
            }
        }
    }

    /// A global status variable's value (e.g. `Rpl_semi_sync_master_clients`), empty
    /// if there is no such variable.
    pub fn global_status(&self, name: &str) -> io::Result<String> {
        self.sql(&format!(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = {}",
            quote_literal(&name.to_ascii_uppercase())
        ))
        .map(|out| out.trim().to_string())
    }
}

/// Starts one server per entry of `opts` in parallel; on any failure the servers that
/// did start are stopped (dropped) and the first error returned.
pub fn start_all(opts: &[LocalDbOptions]) -> io::Result<Vec<LocalMariaDb>> {
    let results: Vec<io::Result<LocalMariaDb>> = std::thread::scope(|scope| {
        let starting: Vec<_> = opts
            .iter()
            .map(|o| scope.spawn(move || LocalMariaDb::start(o)))
            .collect();
        starting
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("starting a server panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Polls `check` until it answers `Ok(())` or `deadline` passes; the timeout error
/// carries the last reason it gave.
fn wait_until(
    deadline: Instant,
    mut check: impl FnMut() -> io::Result<Result<(), String>>,
) -> io::Result<()> {
    let mut delay = Duration::from_millis(10);
    loop {
        let reason = match check()? {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, reason));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_status_reads_the_columns_by_name() {
        let text = "Slave_IO_State\tMaster_Host\tMaster_Port\tSlave_IO_Running\t\
                    Slave_SQL_Running\tLast_IO_Error\tLast_SQL_Error\tGtid_IO_Pos\n\
                    Waiting for master to send event\t127.0.0.1\t4406\tYes\tNo\t\t\
                    Error 'x: y' on query\t0-1-12\n";
        let status = ReplicaStatus::parse(text).expect("a status");
        assert_eq!(status.master_port, "4406");
        assert_eq!(status.io_running, "Yes");
        assert!(!status.running());
        assert_eq!(status.last_io_error, "");
        assert_eq!(status.last_sql_error, "Error 'x: y' on query");
        assert_eq!(status.gtid_io_pos, "0-1-12");
        assert_eq!(ReplicaStatus::parse(""), None);
        assert_eq!(ReplicaStatus::parse("Slave_IO_State\tMaster_Host\n"), None);
    }
}
