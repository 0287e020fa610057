//! `LOAD DATA LOCAL INFILE` through the relay.
//!
//! The backend answers the statement with a file request (0xFB and the file name),
//! which is relayed to the client like any answer. The client then sends the file as
//! packets (sequence ids going on from the request's) and an empty packet at its end
//! (at once, when it refuses); shardgate passes them to the backend as they come,
//! unchanged and with the same sequence ids, so the backend's final OK or ERR, relayed
//! raw, carries the id the client expects. Memory is one client packet (bounded by
//! `max_packet_size` and the client buffer budget) plus a 64 KiB write batch.
//!
//! If the backend is lost mid-file, the rest of the file is read and dropped (the
//! client only listens again after its empty packet) and the client gets an ERR in the
//! backend's place ([`BackendError::LostAnswered`]); the session goes on, unless it had
//! state on that connection (a transaction), which is gone with it. If the client is
//! lost mid-file, the backend connection is closed (it still waits for the file).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{BackendConn, BackendError};
use crate::protocol::packet::{PacketConn, MAX_PAYLOAD};
use crate::protocol::relay::{Outcome, ResponseKind};

/// File bytes collected before they are written to the backend.
const WRITE_BATCH: usize = 64 * 1024;
/// Longest wait for the client's next file packet (MariaDB's `net_read_timeout`).
const FILE_PACKET_WAIT: Duration = Duration::from_secs(30);

/// How the file phase ended for the backend.
enum FileEnd {
    /// All of the file reached the backend; the last client packet's sequence id.
    Sent(u8),
    /// The backend failed mid-file; the client's file was read to its end.
    BackendLost(u8, String),
}

impl BackendConn {
    /// Sends a command and relays its answer to `client`, like [`BackendConn::relay`];
    /// when the backend asks for a local file, streams the client's file to it and
    /// relays the rest of the answer. `limit` bounds one client packet; `cluster`
    /// names the backend in the error a client gets if it is lost mid-file.
    /// `hold_deadlock`: an answer that is one ERR 1213 is not relayed (see
    /// `relay_or_hold`); only the command's first answer, never
    /// the one after a file.
    pub async fn relay_command<C: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        payload: &[u8],
        kind: ResponseKind,
        client: &mut PacketConn<C>,
        limit: usize,
        cluster: &str,
        hold_deadlock: bool,
    ) -> Result<Outcome, BackendError> {
        self.last_used = std::time::Instant::now();
        let outcome = self
            .relay_or_hold(payload, kind, &mut client.io, hold_deadlock)
            .await?;
        self.after_first_answer(outcome, client, limit, cluster)
            .await
    }

    /// The rest of [`relay_command`](Self::relay_command) after the first answer was
    /// relayed (by `relay_or_hold`): when that answer asked for a local file, the
    /// file and the answers after it; otherwise the first answer is the outcome.
    pub async fn after_first_answer<C: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut outcome: Outcome,
        client: &mut PacketConn<C>,
        limit: usize,
        cluster: &str,
    ) -> Result<Outcome, BackendError> {
        let mut sets = outcome.result_sets;
        while outcome.local_infile {
            let last = match self.stream_file(client, limit).await? {
                FileEnd::Sent(last) => last,
                FileEnd::BackendLost(last, m) => {
                    let why = format!("the file of LOAD DATA LOCAL did not reach it: {m}");
                    return Err(self.answer_lost(client, cluster, last, why).await);
                }
            };
            outcome = match self
                .relay_response(ResponseKind::Query, &mut client.io)
                .await
            {
                Ok(o) => o,
                Err(BackendError::Backend(m)) => {
                    // Nothing of the answer reached the client yet: it still waits
                    // for the answer to its file. The whole file was sent, so the
                    // rows may have been loaded: say the outcome is unknown.
                    let why = format!(
                        "lost after the whole LOAD DATA LOCAL file was sent, before its \
                         answer: whether the rows were loaded is unknown; check before \
                         loading again: {m}"
                    );
                    return Err(self.answer_lost(client, cluster, last, why).await);
                }
                Err(e) => return Err(e),
            };
            sets += outcome.result_sets;
        }
        outcome.result_sets = sets;
        Ok(outcome)
    }

    /// Passes the client's file packets to the backend, up to and including the
    /// empty one.
    async fn stream_file<C: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut PacketConn<C>,
        limit: usize,
    ) -> Result<FileEnd, BackendError> {
        let mut lost: Option<String> = None;
        loop {
            let read = crate::timer::timeout(FILE_PACKET_WAIT, client.read_packet(limit)).await;
            let (last_seq, packet) = match read {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(self.client_lost(e.to_string())),
                Err(_) => return Err(self.client_lost("no file packet for 30 s".into())),
            };
            if lost.is_none() {
                // A packet of 16 MiB or more arrived split; it leaves split the same.
                let first_seq = last_seq.wrapping_sub((packet.len() / MAX_PAYLOAD) as u8);
                self.conn.queue(first_seq, &packet);
                if packet.is_empty() || self.conn.wbuf.len() >= WRITE_BATCH {
                    if let Err(e) = self.conn.flush().await {
                        self.broken = true;
                        self.conn.wbuf.clear();
                        lost = Some(format!("sending the file: {e}"));
                    }
                }
            }
            if packet.is_empty() {
                return Ok(match lost {
                    None => FileEnd::Sent(last_seq),
                    Some(m) => FileEnd::BackendLost(last_seq, m),
                });
            }
        }
    }

    fn client_lost(&mut self, why: String) -> BackendError {
        // The backend still waits for the rest of the file.
        self.broken = true;
        BackendError::Client(std::io::Error::other(format!(
            "client failed while sending a LOAD DATA LOCAL file: {why}"
        )))
    }

    /// Answers the client's file in the lost backend's place (an ERR with the
    /// sequence id it waits for) and returns the error that closes the session.
    async fn answer_lost<C: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut PacketConn<C>,
        cluster: &str,
        last_seq: u8,
        why: String,
    ) -> BackendError {
        self.broken = true;
        let e = crate::error::ProxyError::lost_backend(cluster, why.clone());
        let err = crate::protocol::wire::proxy_err_payload(&e);
        if let Err(e) = client.send(last_seq.wrapping_add(1), &err).await {
            return BackendError::Client(e);
        }
        BackendError::LostAnswered(why)
    }
}
