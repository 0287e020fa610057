//! Change capture from the cluster's row-based binary log (the way gh-ost and
//! VReplication work): nothing runs inside the application's transactions, and its
//! statements take no lock they would not take anyway.
//!
//! A task of its own reads the binlog from a position taken before the ghost table
//! exists (`COM_BINLOG_DUMP` on shardgate's own connection; events decoded with
//! `mysql_common`), in order, and notes the key of every row the original table's
//! row events touch (before and after images: a key change is a delete plus an
//! insert). Batches of keys are then brought up to date in the ghost on another
//! connection, at READ COMMITTED (a consistent read of the original, no row locks):
//!
//! - `DELETE` from the ghost those keys the original no longer has;
//! - `REPLACE` into the ghost the original's current row for those keys at or below
//!   the copy's high watermark (keys above it are read by a later chunk anyway).
//!
//! Re-reading the current row rather than replaying the row image makes every apply
//! idempotent and order-insensitive: a row is always made equal to the original's
//! latest committed version, and any later change is a later event. So a resumed
//! copy may read from an older position again, and the chunks may copy with a plain
//! consistent read (`INSERT ... ON DUPLICATE KEY UPDATE` that keeps a row the capture
//! already wrote). The applied position (every event before it is in the ghost) is
//! saved with each chunk's checkpoint and is what the cut-over drains to.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::{EventData, RowsEventData};
use mysql_common::binlog::EventStreamReader;
use tokio::sync::Notify;

use crate::backend::SqlConn;
use crate::vschema::Cluster;

use super::binlog_apply::{apply_keys, key_of};
use super::chunk::ChunkKey;
use super::schema::{cell, Column};
use super::sql::server_err;
use super::CopyError;

/// COM_BINLOG_DUMP.
const COM_BINLOG_DUMP: u8 = 0x12;
/// MariaDB's GTID event (starts an event group).
const MARIADB_GTID_EVENT: u8 = 162;
/// Keys collected before they are applied at the latest.
const MAX_BATCH: usize = 500;
/// How long a collected key may wait for more before the batch is applied.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Largest binlog event accepted (MariaDB's own `max_allowed_packet` ceiling).
const MAX_EVENT: usize = 1 << 30;
/// Keys of the most recent row changes kept with their positions, so the cut-over can
/// tell which rows changed after a position (older ones are forgotten).
const RECENT_KEYS: usize = 100_000;
/// The server's heartbeat while the binlog is idle, so the reader knows its position.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A position in the binary log: the file and the offset of the next event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct BinlogPos {
    /// `mariadb-bin.000042`.
    pub file: String,
    /// Byte offset in it.
    pub pos: u64,
}

impl BinlogPos {
    /// `file:pos`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }

    /// Parses [`Self::encode`]'s form.
    pub fn decode(s: &str) -> Option<BinlogPos> {
        let (file, pos) = s.rsplit_once(':')?;
        let ok = !file.is_empty()
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        ok.then_some(())?;
        Some(BinlogPos {
            file: file.to_string(),
            pos: pos.parse().ok()?,
        })
    }
}

/// Why the binlog cannot capture changes for a table on this cluster (the copy then
/// falls back to triggers), or the position it would start from.
pub(crate) async fn availability(
    conn: &mut SqlConn,
    key: &[KeyColumn],
) -> Result<Result<BinlogPos, String>, CopyError> {
    if let Some(k) = key.iter().find(|k| k.column.data_type == "timestamp") {
        return Ok(Err(format!(
            "the copy's key column {} is a TIMESTAMP",
            k.column.name
        )));
    }
    let vars = conn
        .query("SELECT @@log_bin, @@binlog_format, @@binlog_row_image")
        .await
        .map_err(|e| server_err("reading the binlog settings", e))?;
    let row = vars.rows.first().cloned().unwrap_or_default();
    let (on, format, image) = (cell(&row, 0), cell(&row, 1), cell(&row, 2));
    if on != Some("1") {
        return Ok(Err("the binary log is off (log_bin)".into()));
    }
    if !format.is_some_and(|f| f.eq_ignore_ascii_case("ROW")) {
        return Ok(Err(format!(
            "binlog_format is {}, not ROW",
            format.unwrap_or("unknown")
        )));
    }
    if !image.is_some_and(|f| f.eq_ignore_ascii_case("FULL")) {
        return Ok(Err(format!(
            "binlog_row_image is {}, not FULL",
            image.unwrap_or("unknown")
        )));
    }
    match current_position(conn).await {
        Ok(p) => Ok(Ok(p)),
        Err(CopyError::Failed(m)) => Ok(Err(m)),
        Err(e) => Err(e),
    }
}

/// `SHOW MASTER STATUS`: the end of the binary log now.
pub(crate) async fn current_position(conn: &mut SqlConn) -> Result<BinlogPos, CopyError> {
    let status = conn
        .query("SHOW MASTER STATUS")
        .await
        .map_err(|e| server_err("reading the binlog position", e))?;
    let row = status.rows.first().cloned().unwrap_or_default();
    match (cell(&row, 0), cell(&row, 1).and_then(|p| p.parse().ok())) {
        (Some(file), Some(pos)) => Ok(BinlogPos {
            file: file.to_string(),
            pos,
        }),
        _ => Err(CopyError::Failed(
            "SHOW MASTER STATUS gave no position (binary log off, or no BINLOG MONITOR \
             privilege)"
                .into(),
        )),
    }
}

/// Whether the binary log still holds `file` (a resumed capture needs it).
pub(crate) async fn still_has(conn: &mut SqlConn, file: &str) -> Result<bool, CopyError> {
    let logs = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| server_err("listing the binary logs", e))?;
    Ok(logs.rows.iter().any(|r| cell(r, 0) == Some(file)))
}

/// A column of the copy's key: where it sits in the original's row images and how its
/// values are written back into SQL.
#[derive(Debug, Clone)]
pub(crate) struct KeyColumn {
    /// 0-based position among the original's columns.
    pub ordinal: usize,
    pub column: Column,
}

/// What the capture keeps in step.
#[derive(Debug, Clone)]
pub(crate) struct CaptureSpec {
    pub database: String,
    pub table: String,
    pub ghost: String,
    /// Columns written to the ghost.
    pub columns: Vec<String>,
    pub key: ChunkKey,
    pub key_columns: Vec<KeyColumn>,
}

/// Which keys the capture applies: those at or below the copy's last chunk bound
/// (hex per key column, as in the checkpoint), or all of them once the copy has
/// reached the end of the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Watermark {
    Upto(Vec<String>),
    /// Before the first chunk: every key is left to the copy.
    #[default]
    Nothing,
    All,
}

#[derive(Default)]
struct Shared {
    watermark: Watermark,
    /// Every event before this position is in the ghost.
    applied: BinlogPos,
    /// GTID of the last event group read (MariaDB `domain-server-seq`).
    gtid: Option<String>,
    /// Why the capture stopped, if it did.
    failed: Option<CopyError>,
    rows_applied: u64,
    /// A chunk is between its watermark move and its commit.
    in_flight: bool,
    /// Keys applied while a chunk was in flight: that chunk may have read them before
    /// the change and written them after the capture did (a deleted row would come
    /// back), so they are applied again once it has committed.
    recheck: HashSet<Vec<String>>,
    /// The keys of the latest row changes, with their events' positions, oldest first.
    recent: std::collections::VecDeque<(BinlogPos, Vec<String>)>,
    /// The position of the newest change `recent` no longer holds.
    forgotten: BinlogPos,
    /// Where the reader is: every event before it has been read.
    read: BinlogPos,
}

/// The running capture; stopped when dropped.
pub(crate) struct BinlogCapture {
    spec: CaptureSpec,
    shared: Arc<Mutex<Shared>>,
    progressed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BinlogCapture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BinlogCapture {
    /// Starts reading at `from`; keys above `watermark` are left to the copy.
    pub(crate) async fn start(
        cluster: &Cluster,
        spec: CaptureSpec,
        from: BinlogPos,
        watermark: Watermark,
        lock_wait: Duration,
    ) -> Result<BinlogCapture, CopyError> {
        let mut stream =
            super::sql::connect(cluster, &spec.database, lock_wait, "READ COMMITTED").await?;
        let checksums = request_dump(&mut stream, &from).await?;
        // The stream's first packet says whether the server serves it (a missing
        // REPLICATION SLAVE grant, a purged position): an ERR here is a `Failed`, so a
        // fresh copy falls back to triggers rather than failing later.
        let first = crate::timer::timeout(Duration::from_secs(10), stream.next_packet(MAX_EVENT))
            .await
            .map_err(|_| CopyError::Connection("no answer to the binlog request in 10 s".into()))?
            .map_err(|e| CopyError::Connection(format!("requesting the binlog: {e}")))?;
        if first.first() == Some(&0xff) {
            let why = crate::protocol::wire::parse_err(&first)
                .map(|e| format!("{} ({})", e.message, e.code))
                .unwrap_or_else(|| "unreadable error".into());
            return Err(CopyError::Failed(format!(
                "the server refused the binlog stream: {why}"
            )));
        }
        let applier =
            super::sql::connect(cluster, &spec.database, lock_wait, "READ COMMITTED").await?;
        let shared = Arc::new(Mutex::new(Shared {
            watermark,
            applied: from.clone(),
            read: from.clone(),
            forgotten: from.clone(),
            ..Shared::default()
        }));
        let progressed = Arc::new(Notify::new());
        let reader = Reader {
            spec: spec.clone(),
            stream,
            applier,
            shared: shared.clone(),
            progressed: progressed.clone(),
            esr: EventStreamReader::new(BinlogVersion::Version4),
            file: from.file.clone(),
            seen: from,
            in_group: false,
            checksums,
            fde_seen: false,
            table_ids: HashSet::new(),
            pending: HashSet::new(),
            oldest: None,
        };
        let task = tokio::spawn(reader.run(first));
        Ok(BinlogCapture {
            spec,
            shared,
            progressed,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the high watermark (before a chunk reads its rows).
    /// Once `All`, it stays `All`.
    pub(crate) fn set_watermark(&self, w: Watermark) {
        let mut s = self.lock();
        if s.watermark != Watermark::All {
            s.watermark = w;
        }
    }

    /// A chunk is about to read up to `hi`: the watermark moves there first.
    pub(crate) fn begin_chunk(&self, hi: &[String]) {
        let mut s = self.lock();
        if s.watermark != Watermark::All {
            s.watermark = Watermark::Upto(hi.to_vec());
        }
        s.in_flight = true;
    }

    /// The chunk committed (or rolled back): applies again, on `conn`, the keys the
    /// capture applied while it was in flight.
    pub(crate) async fn end_chunk(&self, conn: &mut SqlConn) -> Result<(), CopyError> {
        let (keys, watermark) = {
            let mut s = self.lock();
            s.in_flight = false;
            let keys: Vec<Vec<String>> = s.recheck.drain().collect();
            (keys, s.watermark.clone())
        };
        if keys.is_empty() {
            return Ok(());
        }
        let n = apply_keys(conn, &self.spec, &keys, &watermark).await?;
        self.lock().rows_applied += n;
        Ok(())
    }

    /// Every event before this position is in the ghost.
    pub(crate) fn applied(&self) -> BinlogPos {
        self.lock().applied.clone()
    }

    /// Rows brought up to date so far, and the last GTID read.
    pub(crate) fn stats(&self) -> (u64, Option<String>) {
        let s = self.lock();
        (s.rows_applied, s.gtid.clone())
    }

    /// The capture's failure, if it stopped.
    pub(crate) fn check(&self) -> Result<(), CopyError> {
        match &self.lock().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// The keys of the row changes after `after` up to and including `upto`, or `None`
    /// when some of them are no longer remembered.
    pub(crate) fn keys_between(
        &self,
        after: &BinlogPos,
        upto: &BinlogPos,
    ) -> Option<HashSet<Vec<String>>> {
        let s = self.lock();
        if s.forgotten > *after {
            return None;
        }
        Some(
            s.recent
                .iter()
                .filter(|(p, _)| p > after && p <= upto)
                .map(|(_, k)| k.clone())
                .collect(),
        )
    }

    /// Waits until the reader has read every event before `target`, at most `limit`.
    pub(crate) async fn wait_read(
        &self,
        target: &BinlogPos,
        limit: Duration,
    ) -> Result<(), CopyError> {
        self.wait_for(limit, "read up to", target, |s| s.read.clone())
            .await
    }

    /// Waits until every event before `target` is in the ghost, at most `limit`.
    pub(crate) async fn drain_to(
        &self,
        target: &BinlogPos,
        limit: Duration,
    ) -> Result<(), CopyError> {
        self.wait_for(limit, "reach", target, |s| s.applied.clone())
            .await
    }

    /// Waits until `at` (the read or the applied position) is at `target` or beyond.
    async fn wait_for(
        &self,
        limit: Duration,
        doing: &str,
        target: &BinlogPos,
        at: impl Fn(&Shared) -> BinlogPos,
    ) -> Result<(), CopyError> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.progressed.notified();
            self.check()?;
            let now = at(&self.lock());
            if now >= *target {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CopyError::Connection(format!(
                    "the binlog capture did not {doing} {} within {} ms (at {})",
                    target.encode(),
                    limit.as_millis(),
                    now.encode()
                )));
            }
            // The applied position is announced; the read one is looked at again soon.
            let _ = crate::timer::timeout(left.min(Duration::from_millis(5)), notified).await;
        }
    }
}

/// Registers the connection as a binlog reader and asks for the stream from `from`.
/// Returns whether events carry checksums.
async fn request_dump(conn: &mut SqlConn, from: &BinlogPos) -> Result<bool, CopyError> {
    let checksums = conn
        .query("SELECT @@global.binlog_checksum")
        .await
        .map_err(|e| server_err("reading binlog_checksum", e))?
        .scalar()
        .is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
    let setup = format!(
        "SET @master_binlog_checksum = @@global.binlog_checksum, \
         @mariadb_slave_capability = 4, @master_heartbeat_period = {}",
        HEARTBEAT.as_nanos()
    );
    conn.execute(&setup)
        .await
        .map_err(|e| server_err("preparing the binlog stream", e))?;
    // A server id no replica is likely to use: a fixed prefix, this process's id and a
    // random number.
    let server_id = 0x5347_0000u32 | (std::process::id() & 0xffff) ^ (rand::random::<u16>() as u32);
    let mut p = Vec::with_capacity(11 + from.file.len());
    p.push(COM_BINLOG_DUMP);
    p.extend_from_slice(&(from.pos.min(u32::MAX as u64) as u32).to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes()); // flags: block at the end, wait for more
    p.extend_from_slice(&server_id.to_le_bytes());
    p.extend_from_slice(from.file.as_bytes());
    conn.start_stream(&p)
        .await
        .map_err(|e| CopyError::Connection(format!("requesting the binlog: {e}")))?;
    Ok(checksums)
}

struct Reader {
    spec: CaptureSpec,
    stream: SqlConn,
    applier: SqlConn,
    shared: Arc<Mutex<Shared>>,
    progressed: Arc<Notify>,
    esr: EventStreamReader,
    /// Current binlog file.
    file: String,
    /// Position after the last complete event group read.
    seen: BinlogPos,
    in_group: bool,
    /// Events end in a CRC32 (`binlog_checksum`), and whether the format event that
    /// says so has been read.
    checksums: bool,
    fde_seen: bool,
    /// Table ids the server gave the original table (table map events).
    table_ids: HashSet<u64>,
    /// Keys (hex per column) touched since the last apply.
    pending: HashSet<Vec<String>>,
    oldest: Option<Instant>,
}

impl Reader {
    async fn run(mut self, first: bytes::Bytes) {
        let read = match self.on_packet(&first) {
            Ok(()) => self.read_loop().await,
            Err(e) => Err(e),
        };
        if let Err(e) = read {
            tracing::warn!(table = %self.spec.table, error = ?e, "binlog capture stopped");
            self.shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .failed = Some(e);
            self.progressed.notify_waiters();
        }
    }

    async fn read_loop(&mut self) -> Result<(), CopyError> {
        loop {
            let wait = match self.oldest {
                Some(t) => BATCH_WAIT.saturating_sub(t.elapsed()),
                None => HEARTBEAT * 5,
            };
            match crate::timer::timeout(wait, self.stream.next_packet(MAX_EVENT)).await {
                Ok(Ok(packet)) => self.on_packet(&packet)?,
                Ok(Err(e)) => {
                    return Err(CopyError::Connection(format!("reading the binlog: {e}")))
                }
                Err(_) if self.oldest.is_some() => {}
                Err(_) => {
                    return Err(CopyError::Connection(
                        "the binlog stream went silent (no heartbeat)".into(),
                    ))
                }
            }
            let due = self
                .oldest
                .is_some_and(|t| t.elapsed() >= BATCH_WAIT || self.pending.len() >= MAX_BATCH);
            if due {
                self.apply().await?;
            } else if self.pending.is_empty() {
                self.publish();
            }
        }
    }

    fn publish(&self) {
        let mut s = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.seen > s.applied {
            s.applied = self.seen.clone();
            drop(s);
            self.progressed.notify_waiters();
        }
    }

    fn on_packet(&mut self, packet: &[u8]) -> Result<(), CopyError> {
        match packet.first() {
            Some(0) => {}
            Some(0xff) => {
                let why = crate::protocol::wire::parse_err(packet)
                    .map(|e| format!("{} ({})", e.message, e.code))
                    .unwrap_or_else(|| "unreadable error".into());
                // The position is gone (purged) or the account may not read it.
                return Err(CopyError::Failed(format!("the binlog stream ended: {why}")));
            }
            _ => {
                return Err(CopyError::Connection(
                    "the binlog stream ended (end of data)".into(),
                ))
            }
        }
        let event = self
            .esr
            .read(&packet[1..])
            .map_err(|e| CopyError::Failed(format!("unreadable binlog event: {e}")))?;
        let Some(event) = event else { return Ok(()) };
        let header = event.header();
        let next = u64::from(header.log_pos());
        if header.event_type_raw() == MARIADB_GTID_EVENT {
            self.in_group = true;
            let data = event.data();
            if data.len() >= 12 {
                let seq = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
                let domain = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
                self.lock().gtid = Some(format!("{domain}-{}-{seq}", header.server_id()));
            }
            return Ok(());
        }
        let data = event
            .read_data()
            .map_err(|e| CopyError::Failed(format!("unreadable binlog event: {e}")))?;
        let mut ends_group = false;
        match data {
            Some(EventData::RotateEvent(r)) => {
                // The first (artificial) rotate comes before the format event, so
                // the decoder does not know yet that events end in a checksum: its
                // name still carries those 4 bytes.
                let name = r.name_raw();
                let end = if self.checksums && !self.fde_seen {
                    name.len().saturating_sub(4)
                } else {
                    name.len()
                };
                self.file = String::from_utf8_lossy(&name[..end]).into_owned();
                if !self.in_group {
                    self.seen = BinlogPos {
                        file: self.file.clone(),
                        pos: r.position(),
                    };
                }
                return Ok(());
            }
            Some(EventData::TableMapEvent(t))
                if t.database_name() == self.spec.database.as_str()
                    && t.table_name() == self.spec.table.as_str() =>
            {
                self.table_ids.insert(t.table_id());
            }
            Some(EventData::RowsEvent(rows)) => {
                let at = BinlogPos {
                    file: self.file.clone(),
                    pos: next,
                };
                self.collect(&rows, at)?
            }
            Some(EventData::FormatDescriptionEvent(_)) => self.fde_seen = true,
            Some(EventData::XidEvent(_)) => ends_group = true,
            Some(EventData::QueryEvent(q)) => {
                if q.query().trim().eq_ignore_ascii_case("BEGIN") {
                    self.in_group = true;
                } else {
                    ends_group = true;
                }
            }
            _ => {}
        }
        if ends_group {
            self.in_group = false;
        }
        if !self.in_group && next > 0 {
            self.seen = BinlogPos {
                file: self.file.clone(),
                pos: next,
            };
            let mut s = self.lock();
            if self.seen > s.read {
                s.read = self.seen.clone();
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn collect(&mut self, rows: &RowsEventData<'_>, at: BinlogPos) -> Result<(), CopyError> {
        if !self.table_ids.contains(&rows.table_id()) {
            return Ok(());
        }
        let Some(tme) = self.esr.get_tme(rows.table_id()) else {
            return Ok(());
        };
        let mut touched = Vec::new();
        for row in rows.rows(tme) {
            let (before, after) =
                row.map_err(|e| CopyError::Failed(format!("unreadable row image: {e}")))?;
            for image in [before, after].iter().flatten() {
                let key = key_of(image, &self.spec.key_columns)?;
                touched.push(key.clone());
                self.pending.insert(key);
            }
        }
        let mut s = self.lock();
        for key in touched {
            s.recent.push_back((at.clone(), key));
        }
        while s.recent.len() > RECENT_KEYS {
            if let Some((p, _)) = s.recent.pop_front() {
                s.forgotten = p;
            }
        }
        drop(s);
        if !self.pending.is_empty() && self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        Ok(())
    }

    /// Brings the pending keys up to date in the ghost, then publishes the position.
    async fn apply(&mut self) -> Result<(), CopyError> {
        let keys: Vec<Vec<String>> = self.pending.drain().collect();
        self.oldest = None;
        let watermark = {
            let mut s = self.lock();
            if s.in_flight {
                s.recheck.extend(keys.iter().cloned());
            }
            s.watermark.clone()
        };
        let n = apply_keys(&mut self.applier, &self.spec, &keys, &watermark).await?;
        self.lock().rows_applied += n;
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_order() {
        let a = BinlogPos {
            file: "mariadb-bin.000002".into(),
            pos: 4,
        };
        assert_eq!(BinlogPos::decode(&a.encode()), Some(a.clone()));
        let b = BinlogPos {
            file: "mariadb-bin.000001".into(),
            pos: 9000,
        };
        assert!(b < a);
        assert_eq!(BinlogPos::decode("x;y:1"), None);
        assert_eq!(BinlogPos::decode("file:abc"), None);
    }
}
