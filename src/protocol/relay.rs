//! Walks the packet boundaries of a backend's response to a command so that it can be
//! relayed raw: shardgate never decodes rows, it only needs to know where the response
//! ends and which status flags it ended with (transaction state, more results).

use super::packet::{physical_payload_len, MAX_PAYLOAD};
use super::status;
use super::wire::{get_lenenc_int, parse_eof_status, parse_ok, OkInfo};

/// Which command the response answers (they end differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// COM_QUERY (and other commands answered by OK / ERR / result sets).
    Query,
    /// COM_FIELD_LIST: column definitions, then EOF (or ERR).
    FieldList,
    /// COM_STMT_PREPARE: ERR, or the PREPARE_OK header, the parameter definitions and
    /// the column definitions (each list closed by an EOF unless `DEPRECATE_EOF`).
    Prepare,
    /// COM_STMT_FETCH: binary rows, then EOF (or ERR), like a result set's rows.
    Fetch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Columns(u64),
    ColumnsEof,
    Rows,
    /// Packets left of a PREPARE_OK answer.
    Definitions(u32),
    Done,
}

/// How a response ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Status flags of the last OK / EOF (unchanged from before if it ended in ERR).
    pub status: Option<u16>,
    /// The OK packet, when the whole response was one OK (no result set).
    pub ok: Option<OkInfo>,
    /// Whether it ended with an ERR packet.
    pub error: bool,
    /// Number of result sets (0 for a plain OK).
    pub result_sets: u32,
    /// Sequence id of the last packet.
    pub last_seq: u8,
    /// Warnings the last OK / EOF reported.
    pub warnings: u16,
    /// Last-insert id of the last OK packet (0 if none).
    pub last_insert_id: u64,
    /// The response stopped at a LOCAL INFILE request (0xFB, the file name): the server
    /// now waits for the file's packets and answers after the empty one.
    pub local_infile: bool,
    /// The answer was a lone ERR the relay was asked to hold back (a deadlock victim
    /// the caller sends again): no byte of it reached the client.
    pub held: bool,
}

/// The backend broke the protocol; the connection cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolViolation(pub &'static str);

/// Incremental scanner over a response's physical packets.
#[derive(Debug)]
pub struct ResponseScanner {
    state: State,
    deprecate_eof: bool,
    continuing: bool,
    packets: u32,
    outcome: Outcome,
    /// Where the ERR packet's payload that ended the response starts, and its length,
    /// in the buffer of the `scan` call that saw it.
    err_payload: (usize, usize),
}

impl ResponseScanner {
    /// A scanner for a response to `kind`; `deprecate_eof` is the connection's capability.
    pub fn new(kind: ResponseKind, deprecate_eof: bool) -> Self {
        ResponseScanner {
            state: match kind {
                ResponseKind::Query => State::Start,
                ResponseKind::FieldList | ResponseKind::Fetch => State::Rows,
                ResponseKind::Prepare => State::Definitions(0),
            },
            deprecate_eof,
            continuing: false,
            packets: 0,
            outcome: Outcome::default(),
            err_payload: (0, 0),
        }
    }

    /// Whether the last packet of the response has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The outcome so far (final once [`is_done`](Self::is_done)).
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Scans the whole physical packets at the start of `buf` (stopping after the last
    /// packet of the response). Returns how many bytes they take.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, ProtocolViolation> {
        let mut at = 0;
        while self.state != State::Done {
            let Some(len) = physical_payload_len(&buf[at..]) else {
                break;
            };
            if buf.len() < at + 4 + len {
                break;
            }
            let seq = buf[at + 3];
            let payload = &buf[at + 4..at + 4 + len];
            at += 4 + len;
            self.outcome.last_seq = seq;
            self.packets += 1;
            let was_continuing = self.continuing;
            self.continuing = len == MAX_PAYLOAD;
            if was_continuing {
                continue; // tail of a split packet: only its first part carries meaning
            }
            self.step(payload, len)?;
            if self.state == State::Done && self.outcome.error {
                self.err_payload = (at - len, len);
            }
        }
        Ok(at)
    }

    /// Whether the response so far is one packet (with an ERR that ended it: the
    /// answer was that ERR alone, nothing before it).
    pub fn single_packet(&self) -> bool {
        self.packets == 1
    }

    /// The payload of the ERR packet that ended the response, read from `buf`: the
    /// buffer given to the `scan` call that finished the response, before it is consumed
    /// (so a relay learns the error without a second pass over the response).
    pub fn error_payload<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        if !(self.is_done() && self.outcome.error) {
            return None;
        }
        let (at, len) = self.err_payload;
        buf.get(at..at + len)
    }

    fn step(&mut self, p: &[u8], len: usize) -> Result<(), ProtocolViolation> {
        let first = p.first().copied();
        match self.state {
            State::Start => match first {
                Some(0x00) => {
                    let ok = parse_ok(p).ok_or(ProtocolViolation("malformed OK packet"))?;
                    self.outcome.status = Some(ok.status);
                    self.outcome.warnings = ok.warnings;
                    self.outcome.last_insert_id = ok.last_insert_id;
                    if self.outcome.result_sets == 0 && self.packets == 1 {
                        self.outcome.ok = Some(ok);
                    } else {
                        self.outcome.ok = None;
                    }
                    self.end_or_more(ok.status);
                }
                Some(0xff) => self.fail(),
                Some(0xfb) => {
                    // LOAD DATA LOCAL: the exchange goes on with the client's file.
                    self.outcome.local_infile = true;
                    self.outcome.ok = None;
                    self.state = State::Done;
                }
                Some(_) => {
                    let mut at = 0;
                    let n = get_lenenc_int(p, &mut at)
                        .ok_or(ProtocolViolation("malformed column count"))?;
                    if n == 0 {
                        return Err(ProtocolViolation("result set with zero columns"));
                    }
                    self.outcome.result_sets += 1;
                    self.outcome.ok = None;
                    self.state = State::Columns(n);
                }
                None => return Err(ProtocolViolation("empty packet where a response starts")),
            },
            State::Columns(n) => {
                if first == Some(0xff) {
                    self.fail();
                } else if n > 1 {
                    self.state = State::Columns(n - 1);
                } else if self.deprecate_eof {
                    self.state = State::Rows;
                } else {
                    self.state = State::ColumnsEof;
                }
            }
            State::ColumnsEof => match first {
                Some(0xfe) if len < 9 => {
                    // An execute that opened a cursor ends here: its rows come with
                    // COM_STMT_FETCH.
                    let st = parse_eof_status(p).unwrap_or(0);
                    if st & status::CURSOR_EXISTS != 0 {
                        self.outcome.status = Some(st);
                        self.state = State::Done;
                    } else {
                        self.state = State::Rows;
                    }
                }
                Some(0xff) => self.fail(),
                _ => return Err(ProtocolViolation("expected EOF after column definitions")),
            },
            State::Rows => match first {
                Some(0xfe) if !self.deprecate_eof && len < 9 => {
                    let st = parse_eof_status(p).unwrap_or(0);
                    self.outcome.status = Some(st);
                    self.outcome.warnings = match p.get(1..3) {
                        Some(w) => u16::from_le_bytes([w[0], w[1]]),
                        None => 0,
                    };
                    self.end_or_more(st);
                }
                Some(0xfe) if self.deprecate_eof && len < MAX_PAYLOAD => {
                    let ok = parse_ok(p).unwrap_or_default();
                    self.outcome.status = Some(ok.status);
                    self.outcome.warnings = ok.warnings;
                    self.end_or_more(ok.status);
                }
                Some(0xff) => self.fail(),
                _ => {}
            },
            State::Definitions(0) if self.packets == 1 => match first {
                Some(0x00) => {
                    let (_, cols, params) = super::binary::parse_prepare_ok(p)
                        .ok_or(ProtocolViolation("malformed PREPARE_OK"))?;
                    self.outcome.warnings = p
                        .get(10..12)
                        .map_or(0, |w| u16::from_le_bytes([w[0], w[1]]));
                    let eofs = u32::from(!self.deprecate_eof);
                    let list = |n: u16| if n > 0 { u32::from(n) + eofs } else { 0 };
                    let left = list(cols) + list(params);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Definitions(left)
                    };
                }
                Some(0xff) => self.fail(),
                _ => return Err(ProtocolViolation("expected PREPARE_OK or ERR")),
            },
            State::Definitions(n) => {
                self.state = if n <= 1 {
                    State::Done
                } else {
                    State::Definitions(n - 1)
                };
            }
            State::Done => {}
        }
        Ok(())
    }

    fn end_or_more(&mut self, st: u16) {
        self.state = if st & status::MORE_RESULTS_EXISTS != 0 {
            State::Start
        } else {
            State::Done
        };
    }

    fn fail(&mut self) {
        self.outcome.error = true;
        self.outcome.ok = None;
        self.state = State::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::put_packet;
    use crate::protocol::wire::{eof_payload, err_payload, ok_payload};
    use bytes::BytesMut;

    fn resultset(deprecate_eof: bool, more: bool) -> BytesMut {
        let mut b = BytesMut::new();
        let st = if more {
            status::MORE_RESULTS_EXISTS | 2
        } else {
            2
        };
        let mut seq = put_packet(&mut b, 1, &[2]);
        seq = put_packet(&mut b, seq, b"\x03defcol1");
        seq = put_packet(&mut b, seq, b"\x03defcol2");
        if !deprecate_eof {
            seq = put_packet(&mut b, seq, &eof_payload(2));
        }
        seq = put_packet(&mut b, seq, b"\x011\x012");
        seq = put_packet(&mut b, seq, b"\xfb\x012");
        if deprecate_eof {
            let mut ok = ok_payload(&OkInfo {
                status: st,
                ..Default::default()
            });
            ok[0] = 0xfe;
            put_packet(&mut b, seq, &ok);
        } else {
            put_packet(&mut b, seq, &eof_payload(st));
        }
        b
    }

    #[test]
    fn finds_the_end_of_a_result_set_byte_by_byte() {
        for dep in [false, true] {
            let b = resultset(dep, false);
            let mut s = ResponseScanner::new(ResponseKind::Query, dep);
            // feed growing prefixes, consuming what the scanner accepted
            let mut consumed = 0;
            for end in 1..=b.len() {
                consumed += s.scan(&b[consumed..end]).unwrap();
            }
            assert!(s.is_done());
            assert_eq!(consumed, b.len());
            assert_eq!(s.outcome().result_sets, 1);
            assert_eq!(s.outcome().status, Some(2));
        }
    }

    #[test]
    fn multi_results_continue_until_the_last() {
        let mut b = resultset(true, true);
        let mut ok = BytesMut::new();
        put_packet(
            &mut ok,
            7,
            &ok_payload(&OkInfo {
                affected_rows: 3,
                status: 2,
                ..Default::default()
            }),
        );
        b.extend_from_slice(&ok);
        let mut s = ResponseScanner::new(ResponseKind::Query, true);
        assert_eq!(s.scan(&b).unwrap(), b.len());
        assert!(s.is_done());
        assert_eq!(s.outcome().result_sets, 1);
        assert_eq!(s.outcome().ok, None);
    }

    #[test]
    fn plain_ok_and_err() {
        let mut b = BytesMut::new();
        put_packet(
            &mut b,
            1,
            &ok_payload(&OkInfo {
                affected_rows: 5,
                status: 3,
                ..Default::default()
            }),
        );
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        assert_eq!(s.scan(&b).unwrap(), b.len());
        assert_eq!(s.outcome().ok.map(|o| o.affected_rows), Some(5));
        let mut e = BytesMut::new();
        put_packet(&mut e, 1, &err_payload(1146, b"42S02", "no table"));
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        s.scan(&e).unwrap();
        assert!(s.is_done() && s.outcome().error);
        let p = s.error_payload(&e).expect("the ERR payload");
        assert_eq!(
            crate::protocol::wire::parse_err(p).map(|i| i.code),
            Some(1146)
        );
        assert_eq!(
            ResponseScanner::new(ResponseKind::Query, false).error_payload(&e),
            None
        );
    }

    #[test]
    fn prepare_ok_ends_after_its_definitions() {
        for dep in [false, true] {
            let mut b = BytesMut::new();
            // id 7, 2 columns, 1 parameter, warnings 0
            let mut seq = put_packet(
                &mut b,
                1,
                b"\x00\x07\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00",
            );
            seq = put_packet(&mut b, seq, b"\x03defparam");
            if !dep {
                seq = put_packet(&mut b, seq, &eof_payload(2));
            }
            seq = put_packet(&mut b, seq, b"\x03defcol1");
            seq = put_packet(&mut b, seq, b"\x03defcol2");
            if !dep {
                put_packet(&mut b, seq, &eof_payload(2));
            }
            let mut s = ResponseScanner::new(ResponseKind::Prepare, dep);
            assert_eq!(s.scan(&b).unwrap(), b.len());
            assert!(s.is_done(), "deprecate_eof {dep}");
            let mut tail = b.clone();
            tail.extend_from_slice(b"\x01\x00\x00\x09\x00");
            let mut s = ResponseScanner::new(ResponseKind::Prepare, dep);
            assert_eq!(s.scan(&tail).unwrap(), b.len(), "stops at the answer's end");
        }
    }

    #[test]
    fn a_cursor_execute_ends_after_its_column_definitions() {
        let mut b = BytesMut::new();
        let mut seq = put_packet(&mut b, 1, &[1]);
        seq = put_packet(&mut b, seq, b"\x03defcol1");
        put_packet(&mut b, seq, &eof_payload(status::CURSOR_EXISTS | 2));
        let mut s = ResponseScanner::new(ResponseKind::Query, false);
        assert_eq!(s.scan(&b).unwrap(), b.len());
        assert!(s.is_done());
        assert_eq!(s.outcome().status, Some(status::CURSOR_EXISTS | 2));
    }

    #[test]
    fn a_local_infile_request_ends_the_scan() {
        let mut b = BytesMut::new();
        put_packet(&mut b, 1, b"\xfb/tmp/rows.tsv");
        let mut s = ResponseScanner::new(ResponseKind::Query, true);
        assert_eq!(s.scan(&b).unwrap(), b.len());
        assert!(s.is_done());
        assert!(s.outcome().local_infile && !s.outcome().error);
        assert_eq!(s.outcome().last_seq, 1);
    }

    #[test]
    fn field_list_ends_at_eof() {
        let mut b = BytesMut::new();
        let seq = put_packet(&mut b, 1, b"\x03defcol1");
        put_packet(&mut b, seq, &eof_payload(2));
        let mut s = ResponseScanner::new(ResponseKind::FieldList, false);
        assert_eq!(s.scan(&b).unwrap(), b.len());
        assert!(s.is_done());
    }
}
